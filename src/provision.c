/* provision.c — the personalization pipeline (see provision.h): flash the golden image when
 * asked, plan and check everything before issuing, record the issuance durably, write in
 * place, verify by reading back. */
#include "provision.h"
#include "image.h"
#include "menderconf.h"
#include "preauth.h"
#include "util.h"

#include <limits.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CONF_MAX (1 << 20)

/* A mender.conf found in a partition. */
struct conf_file {
	struct ps_fs *fs;
	const struct ps_partition *part;
	json_t *conf; /* NULL when the file is absent */
	unsigned mode;
	char name[160]; /* "p2:/etc/mender/mender.conf" */
};

/* Everything the pipeline learned about a target before writing it. */
struct plan {
	struct ps_image img;
	bool img_open;
	struct conf_file data;
	struct conf_file roots[PS_MAX_ROOTFS_PARTS];
	int n_roots;
	struct ps_mender_settings settings;
	char *server_cert_pem;
	size_t server_cert_len;
	char serial_text[PS_SERIAL_MAX + 2]; /* "SERIAL\n" for [preauth] serial_file, or "" */
};

static void emit(const struct ps_provision_request *req, enum ps_stage stage)
{
	if (req->observer != NULL)
		req->observer(stage, req->observer_user);
}

static void set_settings(struct plan *plan, const struct ps_config *cfg)
{
	plan->settings.cert_path = PS_DEVICE_DATA_DIR "/" PS_CERT_NAME;
	plan->settings.key_path = PS_DEVICE_DATA_DIR "/" PS_KEY_NAME;
	plan->settings.server_url = cfg->server_url;
	plan->settings.tenant_token = cfg->tenant_token;
	plan->settings.server_certificate =
	    cfg->server_certificate[0] ? PS_DEVICE_DATA_DIR "/" PS_SERVER_CERT_NAME : NULL;
}

/* Read and parse a mender.conf; an absent file leaves cf->conf NULL. */
static int read_conf(struct conf_file *cf, const char *path, struct ps_err *err)
{
	struct ps_fs_stat st;
	char *text = NULL;
	size_t len = 0;
	int rc;

	snprintf(cf->name, sizeof(cf->name), "p%d:%s", cf->part->number, path);
	rc = ps_fs_stat(cf->fs, path, &st, err);
	if (rc == PS_ENOENT)
		return 0;
	if (rc < 0)
		return rc;
	cf->mode = st.mode;
	rc = ps_fs_read(cf->fs, path, CONF_MAX, &text, &len, err);
	if (rc == 0)
		rc = ps_menderconf_parse(text, len, cf->name, &cf->conf, err);
	free(text);
	return rc;
}

static void conf_file_close(struct conf_file *cf)
{
	ps_fs_close(cf->fs, NULL);
	cf->fs = NULL;
	json_decref(cf->conf);
	cf->conf = NULL;
}

/* Close the filesystems and forget what was read from them; the target stays open. */
static void plan_close_fs(struct plan *plan)
{
	int i;

	conf_file_close(&plan->data);
	for (i = 0; i < plan->n_roots; i++)
		conf_file_close(&plan->roots[i]);
	memset(plan->roots, 0, sizeof(plan->roots));
	plan->n_roots = 0;
	free(plan->server_cert_pem);
	plan->server_cert_pem = NULL;
	plan->server_cert_len = 0;
}

static void plan_free(struct plan *plan)
{
	plan_close_fs(plan);
	if (plan->img_open)
		ps_image_close(&plan->img);
	memset(plan, 0, sizeof(*plan));
}

/* Open the data partition and the root filesystems of an open target and read their
 * mender.conf. Root filesystems are opened for writing only when the configuration goes there. */
static int plan_open_fs(struct plan *plan, const struct ps_config *cfg, bool writable,
			struct ps_err *err)
{
	bool roots_writable = writable && cfg->conf_target == PS_CONF_TARGET_ROOTFS;
	int i, rc;

	memset(&plan->data, 0, sizeof(plan->data));
	plan->data.part = &plan->img.parts[plan->img.data];
	rc = ps_fs_open(&plan->img, plan->data.part, writable, &plan->data.fs, err);
	if (rc == 0)
		rc = read_conf(&plan->data, PS_DATA_DIR "/" PS_CONF_NAME, err);
	for (i = 0; rc == 0 && i < plan->img.n_rootfs; i++) {
		struct conf_file *cf = &plan->roots[plan->n_roots];

		cf->part = &plan->img.parts[plan->img.rootfs[i]];
		if (cf->part->fstype[0] == '\0')
			continue; /* unformatted: an empty rootfs B */
		rc = ps_fs_open(&plan->img, cf->part, roots_writable, &cf->fs, err);
		if (rc < 0)
			break;
		plan->n_roots++;
		if (ps_fs_is_empty(cf->fs)) {
			conf_file_close(cf);
			plan->n_roots--;
			continue;
		}
		rc = read_conf(cf, PS_MAIN_CONF, err);
	}
	if (rc == 0 && cfg->server_certificate[0] != '\0') {
		X509 *cert = NULL;

		rc = ps_read_file(cfg->server_certificate, CONF_MAX, &plan->server_cert_pem,
				  &plan->server_cert_len, err);
		if (rc == 0)
			rc = ps_cert_from_pem(plan->server_cert_pem, plan->server_cert_len, &cert,
					      err);
		if (rc < 0)
			ps_prefix(err, rc, "[mender] server_certificate %s",
				  cfg->server_certificate);
		X509_free(cert);
	}
	return rc;
}

/* Open the target, discover its layout and open its filesystems. */
static int plan_open(struct plan *plan, const struct ps_config *cfg, const char *target,
		     bool writable, struct ps_err *err)
{
	struct ps_layout_hint hint = {cfg->data_partition, cfg->rootfs_partitions,
				      cfg->n_rootfs_partitions};
	int rc;

	memset(plan, 0, sizeof(*plan));
	set_settings(plan, cfg);
	rc = ps_image_open(&plan->img, target, writable, &hint, err);
	if (rc < 0)
		return rc;
	plan->img_open = true;
	return plan_open_fs(plan, cfg, writable, err);
}

/* The files the data partition receives. key/cert may be placeholders of the right size. */
static size_t data_files(struct plan *plan, const struct ps_config *cfg, const char *key,
			 size_t key_len, const char *cert, size_t cert_len, const char *conf_text,
			 struct ps_fs_file *files)
{
	size_t n = 0;

	files[n++] = (struct ps_fs_file){PS_DATA_DIR "/" PS_KEY_NAME, key, key_len, 0600};
	files[n++] = (struct ps_fs_file){PS_DATA_DIR "/" PS_CERT_NAME, cert, cert_len, 0644};
	if (plan->server_cert_pem != NULL)
		files[n++] =
		    (struct ps_fs_file){PS_DATA_DIR "/" PS_SERVER_CERT_NAME, plan->server_cert_pem,
					plan->server_cert_len, 0644};
	if (conf_text != NULL)
		files[n++] =
		    (struct ps_fs_file){PS_DATA_DIR "/" PS_CONF_NAME, conf_text, strlen(conf_text),
					plan->data.conf ? plan->data.mode : 0600};
	/* The serial, for the identity script (scripts/mender-device-identity). */
	if (cfg->preauth_serial_file[0] != '\0' && plan->serial_text[0] != '\0')
		files[n++] = (struct ps_fs_file){cfg->preauth_serial_file, plan->serial_text,
						 strlen(plan->serial_text), 0644};
	return n;
}

/* Merge the station's settings into a copy of cf's configuration and serialize it. */
static int merged_text(struct conf_file *cf, const struct ps_mender_settings *s, char **out,
		       struct ps_err *err)
{
	json_t *merged = cf->conf ? json_deep_copy(cf->conf) : json_object();
	int rc;

	if (merged == NULL)
		return ps_fail(err, PS_ENOMEM, "out of memory");
	rc = ps_menderconf_merge(merged, s, cf->name, err);
	if (rc == 0)
		rc = ps_menderconf_dump(merged, out, err);
	json_decref(merged);
	return rc;
}

/* Check, before anything is issued or written, that the merge is possible and consistent. */
static int plan_check(struct plan *plan, const struct ps_config *cfg, struct ps_err *err)
{
	static const struct ps_mender_settings none;
	const size_t pem_max = 8192; /* a generous size for the key and certificate to come */
	struct ps_fs_file files[5];
	char *text = NULL;
	json_t *merged = NULL;
	int i, roots_with_conf = 0;
	size_t n;
	int rc = 0;

	if (cfg->conf_target == PS_CONF_TARGET_DATA) {
		rc = merged_text(&plan->data, &plan->settings, &text, err);
		if (rc == 0)
			rc = ps_menderconf_parse(text, strlen(text), plan->data.name, &merged, err);
		for (i = 0; rc == 0 && i < plan->n_roots; i++)
			rc = ps_menderconf_check_conflicts(
			    merged, plan->roots[i].conf, plan->roots[i].name, &plan->settings, err);
	} else {
		for (i = 0; rc == 0 && i < plan->n_roots; i++) {
			struct conf_file *cf = &plan->roots[i];
			struct ps_fs_file main_file = {PS_MAIN_CONF, NULL, 0, cf->mode};

			if (cf->conf == NULL)
				continue;
			roots_with_conf++;
			free(text);
			text = NULL;
			json_decref(merged);
			merged = NULL;
			rc = merged_text(cf, &plan->settings, &text, err);
			if (rc == 0)
				rc =
				    ps_menderconf_parse(text, strlen(text), cf->name, &merged, err);
			if (rc == 0)
				rc = ps_menderconf_check_conflicts(plan->data.conf, merged,
								   cf->name, &none, err);
			main_file.len = strlen(text ? text : "") + 1024;
			if (rc == 0)
				rc = ps_fs_check_write(cf->fs, &main_file, 1, err);
		}
		if (rc == 0 && roots_with_conf == 0)
			rc = ps_fail(err, PS_EINVAL,
				     "[mender] conf_target = rootfs, but no root filesystem of %s "
				     "has %s",
				     plan->img.path, PS_MAIN_CONF);
		free(text);
		text = NULL;
	}
	if (rc == 0) {
		n = data_files(plan, cfg, NULL, pem_max, NULL, pem_max,
			       cfg->conf_target == PS_CONF_TARGET_DATA ? text : NULL, files);
		rc = ps_fs_check_write(plan->data.fs, files, n, err);
	}
	json_decref(merged);
	free(text);
	return rc;
}

static void note_written(struct ps_provision_result *res, const struct conf_file *cf,
			 const struct ps_fs_file *file)
{
	if (res->n_written < PS_MAX_WRITTEN)
		snprintf(res->written[res->n_written++], sizeof(res->written[0]), "p%d:%s (%04o)",
			 cf->part->number, file->path, file->mode);
}

/* Write the issued identity and the merged configuration into the target. */
static int plan_write(struct plan *plan, const struct ps_config *cfg,
		      const struct ps_issued *issued, struct ps_provision_result *res,
		      struct ps_err *err)
{
	struct ps_fs_file files[5];
	char *text = NULL;
	size_t n, j;
	int i, rc = 0;

	if (cfg->conf_target == PS_CONF_TARGET_DATA)
		rc = merged_text(&plan->data, &plan->settings, &text, err);
	if (rc < 0)
		return rc;
	n = data_files(plan, cfg, issued->key_pem, issued->key_pem_len, issued->cert_pem,
		       strlen(issued->cert_pem), text, files);
	rc = ps_fs_write_files(plan->data.fs, files, n, err);
	for (j = 0; rc == 0 && j < n; j++)
		note_written(res, &plan->data, &files[j]);
	free(text);
	text = NULL;
	for (i = 0; rc == 0 && cfg->conf_target == PS_CONF_TARGET_ROOTFS && i < plan->n_roots;
	     i++) {
		struct conf_file *cf = &plan->roots[i];
		struct ps_fs_file main_file = {PS_MAIN_CONF, NULL, 0, cf->mode};

		if (cf->conf == NULL)
			continue;
		rc = merged_text(cf, &plan->settings, &text, err);
		if (rc == 0) {
			main_file.data = text;
			main_file.len = strlen(text);
			rc = ps_fs_write_files(cf->fs, &main_file, 1, err);
		}
		if (rc == 0)
			note_written(res, cf, &main_file);
		free(text);
		text = NULL;
	}
	return rc;
}

/* Close every filesystem (writing out metadata) and flush the target. */
static int plan_commit(struct plan *plan, struct ps_err *err)
{
	int i, rc = ps_fs_close(plan->data.fs, err);

	plan->data.fs = NULL;
	for (i = 0; i < plan->n_roots; i++) {
		int r = ps_fs_close(plan->roots[i].fs, rc == 0 ? err : NULL);

		plan->roots[i].fs = NULL;
		if (rc == 0)
			rc = r;
	}
	if (rc == 0)
		rc = ps_image_sync(&plan->img, err);
	return rc;
}

/* The safety gate, before the target is even opened for writing. */
static int gate(const struct ps_provision_request *req, struct ps_err *err)
{
	struct stat st;
	int rc = ps_safety_check(req->target, &req->safety, NULL, err);

	if (rc < 0)
		return rc;
	if (stat(req->target, &st) == 0 && S_ISBLK(st.st_mode) && !req->target_is_slot &&
	    !req->allow_unlisted)
		return ps_fail(err, PS_EUNSAFE,
			       "%s is not a configured station slot; refusing to write it "
			       "(--allow-unlisted overrides)",
			       req->target);
	return 0;
}

/* Flash the golden image onto the target: ps_flash applies the same gate (policy, slot or
 * allow_unlisted) and also refuses a target smaller than the image. */
static int flash_stage(const struct ps_provision_request *req, struct ps_provision_result *res,
		       struct ps_err *err)
{
	const char *targets[1] = {req->target};
	const bool is_slot[1] = {req->target_is_slot};
	struct ps_flash_request freq = {
	    .image = req->flash_image,
	    .bmap = req->flash_bmap,
	    .targets = targets,
	    .n_targets = 1,
	    .verify = !req->flash_no_verify,
	    .safety = req->safety,
	    .allow_unlisted = req->allow_unlisted,
	    .target_is_slot = is_slot,
	    .progress = req->flash_progress,
	    .progress_user = req->flash_progress_user,
	    .cancel = req->cancel,
	};
	struct ps_err ferr = {""};
	char cache[PATH_MAX];
	int rc;

	/* The image hash cache lives beside the audit database, in the station's state
	 * directory, whoever runs the job (a service has no home directory). */
	if (req->cfg->database[0] != '\0' &&
	    ps_sibling_path(req->cfg->database, PS_IMAGE_HASH_CACHE, cache, sizeof(cache)) == 0)
		freq.hash_cache = cache;
	res->flashed = true;
	rc = ps_flash(&freq, &res->flash, &ferr);
	if (rc < 0)
		return ps_fail(err, rc, "cannot flash %s onto %s: %s",
			       res->flash.image_name[0] ? res->flash.image_name : req->flash_image,
			       req->target, res->flash.message[0] ? res->flash.message : ferr.msg);
	if (req->cancel != NULL && atomic_load(req->cancel))
		return ps_fail(err, PS_EIO, "%s: cancelled after flashing; nothing was issued",
			       req->target);
	return 0;
}

static void record_failure(const struct ps_provision_request *req, int64_t id,
			   const struct ps_audit_context *ctx, const struct ps_err *why)
{
	if (id > 0)
		ps_db_set_state(req->db, id, PS_STATE_FAILED, why->msg, ctx, NULL);
}

/* Check a file's mode and owner. */
static int check_mode(struct ps_fs *fs, const char *path, unsigned want, struct ps_err *err)
{
	struct ps_fs_stat st;
	int rc = ps_fs_stat(fs, path, &st, err);

	if (rc < 0)
		return rc;
	if (!st.is_regular || st.mode != want || st.uid != 0 || st.gid != 0)
		return ps_fail(err, PS_EINVAL,
			       "%s has mode %04o owner %u:%u, expected a regular file with mode "
			       "%04o owner 0:0",
			       path, st.mode, st.uid, st.gid, want);
	return 0;
}

/* Compare what was read back with what was written. */
static int same_bytes(const char *what, const char *got, size_t got_len, const char *want,
		      size_t want_len, struct ps_err *err)
{
	if (got_len != want_len || memcmp(got, want, want_len) != 0)
		return ps_fail(err, PS_EIO, "%s read back differs from what was written", what);
	return 0;
}

/* Check what a plan's open filesystems hold: the verification proper. With expect (the
 * pipeline's own issuance), the files must read back byte for byte as issued and the
 * cryptographic checks run on the issued objects; without it (provstation verify) the
 * files are parsed. */
static int verify_plan(struct plan *plan, struct ps_ca *ca, const struct ps_issued *expect,
		       struct ps_verify_result *res, struct ps_err *err)
{
	char *key_pem = NULL, *cert_pem = NULL, *server_pem = NULL;
	size_t key_len = 0, cert_len = 0, server_len = 0;
	EVP_PKEY *key_owned = NULL, *key = NULL;
	X509 *cert_owned = NULL, *cert = NULL;
	json_t *effective = NULL;
	int i, rc;

	memset(res, 0, sizeof(*res));
	rc = check_mode(plan->data.fs, PS_DATA_DIR "/" PS_KEY_NAME, 0600, err);
	if (rc == 0)
		rc = check_mode(plan->data.fs, PS_DATA_DIR "/" PS_CERT_NAME, 0644, err);
	if (rc == 0)
		rc = ps_fs_read(plan->data.fs, PS_DATA_DIR "/" PS_KEY_NAME, 1 << 16, &key_pem,
				&key_len, err);
	if (rc == 0)
		rc = ps_fs_read(plan->data.fs, PS_DATA_DIR "/" PS_CERT_NAME, 1 << 16, &cert_pem,
				&cert_len, err);
	if (rc == 0 && expect != NULL) {
		rc = same_bytes(PS_KEY_NAME, key_pem, key_len, expect->key_pem, expect->key_pem_len,
				err);
		if (rc == 0)
			rc = same_bytes(PS_CERT_NAME, cert_pem, cert_len, expect->cert_pem,
					strlen(expect->cert_pem), err);
		cert = expect->cert;
		key = expect->key;
	} else if (rc == 0) {
		rc = ps_cert_from_pem(cert_pem, cert_len, &cert_owned, err);
		if (rc == 0)
			rc = ps_key_from_pem(key_pem, key_len,
					     EVP_PKEY_get0_type_name(X509_get0_pubkey(cert_owned)),
					     &key_owned, err);
		cert = cert_owned;
		key = key_owned;
	}
	if (rc < 0)
		goto out;
	if (X509_check_private_key(cert, key) != 1) {
		rc = ps_fail(err, PS_EINVAL,
			     "the device key in the image does not match its "
			     "certificate");
		goto out;
	}
	rc = ps_cert_verify(ca, cert, X509_PURPOSE_SSL_CLIENT, err);
	if (rc == 0 && plan->server_cert_pem != NULL) {
		rc = check_mode(plan->data.fs, PS_DATA_DIR "/" PS_SERVER_CERT_NAME, 0644, err);
		if (rc == 0)
			rc = ps_fs_read(plan->data.fs, PS_DATA_DIR "/" PS_SERVER_CERT_NAME,
					CONF_MAX, &server_pem, &server_len, err);
		if (rc == 0)
			rc = same_bytes(PS_SERVER_CERT_NAME, server_pem, server_len,
					plan->server_cert_pem, plan->server_cert_len, err);
	}
	if (rc < 0)
		goto out;
	/* The client's view: the data partition's file, then each root filesystem's over it. */
	for (i = 0; rc == 0 && i < plan->n_roots; i++) {
		effective = ps_menderconf_effective(plan->data.conf, plan->roots[i].conf);
		rc = effective ? ps_menderconf_check_effective(effective, &plan->settings,
							       plan->roots[i].name, err)
			       : ps_fail(err, PS_ENOMEM, "out of memory");
		json_decref(effective);
		effective = NULL;
		res->n_configs_checked++;
	}
	if (rc == 0 && plan->n_roots == 0) {
		rc = ps_menderconf_check_effective(plan->data.conf, &plan->settings,
						   plan->data.name, err);
		res->n_configs_checked++;
	}
	if (rc < 0)
		goto out;
	snprintf(res->common_name, sizeof(res->common_name), "%s", "");
	X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, res->common_name,
				  sizeof(res->common_name));
	rc = ps_cert_serial_hex(cert, res->cert_serial, sizeof(res->cert_serial), err);
	if (rc == 0)
		rc = ps_cert_pubkey_sha256(cert, res->pubkey_sha256, err);
	if (rc == 0) {
		const ASN1_TIME *na = X509_get0_notAfter(cert);
		struct tm tm;

		if (ASN1_TIME_to_tm(na, &tm) == 1)
			ps_format_time(timegm(&tm), res->not_after);
	}
out:
	EVP_PKEY_free(key_owned);
	X509_free(cert_owned);
	ps_free_secret(key_pem, key_len);
	free(cert_pem);
	free(server_pem);
	return rc;
}

int ps_verify(const struct ps_config *cfg, struct ps_ca *ca, const char *target,
	      struct ps_verify_result *res, struct ps_err *err)
{
	struct plan plan;
	int rc = plan_open(&plan, cfg, target, false, err);

	if (rc == 0)
		rc = verify_plan(&plan, ca, NULL, res, err);
	plan_free(&plan);
	return rc;
}

int ps_provision(const struct ps_provision_request *req, struct ps_provision_result *res,
		 struct ps_err *err)
{
	const struct ps_config *cfg = req->cfg;
	struct ps_audit_context ctx = {cfg->station_id, cfg->operator_name, cfg->batch,
				       req->ca->fingerprint};
	struct ps_cert_request cert_req = {.profile = PS_PROFILE_DEVICE, .days = cfg->days};
	struct ps_issue_record rec;
	struct ps_verify_result verified;
	struct ps_issued issued;
	struct plan plan;
	int rc;

	memset(res, 0, sizeof(*res));
	memset(&issued, 0, sizeof(issued));
	memset(&plan, 0, sizeof(plan));
	emit(req, PS_STAGE_CHECKING);
	rc = ps_check_serial(req->serial, err);
	if (rc == 0)
		rc = ps_expand_template(cfg->common_name, req->serial, NULL, res->common_name,
					sizeof(res->common_name), err);
	if (rc < 0)
		goto out;
	if (req->flash_image != NULL) {
		emit(req, PS_STAGE_FLASHING);
		rc = flash_stage(req, res, err);
		if (rc < 0)
			goto out;
	}
	rc = gate(req, err);
	if (rc == 0)
		rc = plan_open(&plan, cfg, req->target, true, err);
	if (rc == 0)
		snprintf(plan.serial_text, sizeof(plan.serial_text), "%s\n", req->serial);
	if (rc == 0)
		rc = plan_check(&plan, cfg, err);
	if (rc < 0)
		goto out;
	ps_partition_describe(plan.data.part, res->data_partition, sizeof(res->data_partition));

	emit(req, PS_STAGE_ISSUING);
	cert_req.common_name = res->common_name;
	cert_req.subject = cfg->subject;
	rc = ps_issue(req->ca, &cert_req, cfg->key_type, &issued, err);
	if (rc < 0)
		goto out;
	snprintf(res->cert_serial, sizeof(res->cert_serial), "%s", issued.serial_hex);
	snprintf(res->pubkey_sha256, sizeof(res->pubkey_sha256), "%s", issued.pubkey_sha256);
	rec = (struct ps_issue_record){
	    .device_serial = req->serial,
	    .common_name = issued.common_name,
	    .pubkey_pem = issued.pubkey_pem,
	    .pubkey_sha256 = issued.pubkey_sha256,
	    .cert_serial = issued.serial_hex,
	    .cert_pem = issued.cert_pem,
	    .not_before = issued.not_before,
	    .not_after = issued.not_after,
	    .target = req->target,
	    .image_name = res->flashed ? res->flash.image_name : NULL,
	    .image_sha256 = res->flashed ? res->flash.image_sha256 : NULL,
	};
	rc = ps_db_record_issued(req->db, &ctx, &rec, &res->audit_id, err);
	if (rc < 0)
		goto out;
	/* Queued in the same breath as the record: the outbox sends it once the certificate is
	 * verified (never when it fails), so no verified device is ever left unqueued. */
	if (req->preauth) {
		rc = ps_preauth_enqueue(req->db, cfg, res->audit_id, req->serial,
					issued.common_name, err);
		if (rc < 0) {
			record_failure(req, res->audit_id, &ctx, err);
			goto out;
		}
	}

	emit(req, PS_STAGE_WRITING);
	rc = plan_write(&plan, cfg, &issued, res, err);
	if (rc == 0)
		rc = plan_commit(&plan, err);
	if (rc == 0)
		rc = ps_db_set_state(req->db, res->audit_id, PS_STATE_WRITTEN, "", &ctx, err);
	if (rc < 0) {
		record_failure(req, res->audit_id, &ctx, err);
		goto out;
	}
	plan_close_fs(&plan);

	/* Read everything back through freshly opened filesystems on the same target. */
	emit(req, PS_STAGE_VERIFYING);
	rc = plan_open_fs(&plan, cfg, false, err);
	if (rc == 0)
		rc = verify_plan(&plan, req->ca, &issued, &verified, err);
	if (rc == 0 && strcmp(verified.cert_serial, issued.serial_hex) != 0)
		rc = ps_fail(err, PS_EIO, "read back certificate %s, expected %s",
			     verified.cert_serial, issued.serial_hex);
	if (rc == 0 && cfg->preauth_serial_file[0] != '\0') {
		char *got = NULL;
		size_t got_len = 0;

		rc = ps_fs_read(plan.data.fs, cfg->preauth_serial_file, 4096, &got, &got_len, err);
		if (rc == 0)
			rc = same_bytes(cfg->preauth_serial_file, got, got_len, plan.serial_text,
					strlen(plan.serial_text), err);
		free(got);
	}
	if (rc < 0) {
		ps_prefix(err, rc, "verification failed");
		record_failure(req, res->audit_id, &ctx, err);
		goto out;
	}
	rc = ps_db_set_state(req->db, res->audit_id, PS_STATE_VERIFIED, "", &ctx, err);
	/* Field service: this device's earlier certificates are superseded (and revoked when
	 * the configuration says so). */
	if (rc == 0)
		rc = ps_db_supersede(req->db, req->serial, res->audit_id, cfg->revoke_superseded,
				     &ctx, err);
	if (rc == 0)
		emit(req, PS_STAGE_DONE);
out:
	plan_free(&plan);
	ps_issued_free(&issued);
	return rc;
}
