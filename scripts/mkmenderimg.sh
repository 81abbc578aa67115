#!/bin/bash
# mkmenderimg.sh - build a Mender-layout disk image (like Yocto's sdimg/uefiimg)
# for provstation's tests, demo and benchmarks.
#
# No root, no mount, no loop devices: the image is a sparse file (truncate),
# the table is written by sfdisk, and every filesystem is created in place at
# its partition's offset (mkfs.ext4 -E offset=BYTES -d DIR, mkfs.vfat
# --offset=SECTORS, mkswap in a sparse scratch file whose 4 KiB header is
# copied into place).  Only metadata is written, so a 16 GiB image takes
# well under a second and a few MiB of disk.
#
# Layout (MiB; 1 MiB alignment; sizes scale with --size S):
#   boot    vfat, label BOOT, min(16, max(4, S/8)) MiB     (--boot yes)
#   rootfs A ext4, no label (as Yocto), (rest - data)/2
#   rootfs B same size as A: byte-identical copy of A (full), empty ext4
#            (empty, Yocto since 2021) or unformatted (none)
#   extra   swap (label "swap", like Yocto's MENDER_SWAP_PART_SIZE_MB) or
#           ext4 (label "extra"), min(256, max(4, S/16)) MiB, placed between
#           rootfs B and data                             (--extra yes|swap|ext4)
#   data    ext4, label "data", at least max(16, S/8) MiB (gets the rounding)
# MBR with five partitions needs an extended partition: p4 is then the
# extended container (not printed), extra is p5 and data p6 (what wic does).
# GPT keeps the last MiB free for the backup table.
#
# Rootfs tree (all root:root):
#   /etc/mender/mender.conf 0600   (unless --no-main-conf)
#   /etc/mender/artifact_info 0644 (artifact_name=release-1)
#   /etc/os-release 0644
#   /usr/share/mender/identity/mender-device-identity 0755
#   /data/ 0755 (empty mount point), /var/lib/mender -> /data/mender
# Data tree (all root:root):
#   /mender/ 0755, /mender/mender.conf 0600 (unless --no-data-conf),
#   /mender/device_type 0444 ("device_type=raspberrypi4")
# Modes follow meta-mender (mender-client recipes install both mender.conf
# files with -m 0600 and device_type with -m 444).
#
# Ownership: mkfs.ext4 -d copies the owner of the source files, so when run
# as non-root every inode is set to uid/gid 0 afterwards with debugfs -w
# "sif" (always done, so images are the same whoever builds them).
# Timestamps: SOURCE_DATE_EPOCH if set, else now (E2FSPROGS_FAKE_TIME); with
# the same UUID and hash seed this makes rootfs B (full) byte-identical to A.
#
# stdout: one line per partition: "pN START_BYTES SIZE_BYTES FSTYPE LABEL ROLE"
#   FSTYPE vfat|ext4|swap|none, LABEL "-" when none,
#   ROLE boot|rootfsA|rootfsB|extra|data.
# Errors: one line on stderr, exit status 1 (2 for usage errors).

set -eu
umask 022
export LC_ALL=C
PATH=$PATH:/usr/sbin:/sbin

prog=mkmenderimg

usage() {
    cat <<'EOF'
Usage: mkmenderimg.sh [options] OUTPUT.img
  --table mbr|gpt              partition table (default mbr)
  --boot yes|no                vfat boot partition first, label BOOT (default yes)
  --rootfs-b full|empty|none   rootfs B: copy of A, empty ext4, unformatted (default empty)
  --extra no|yes|swap|ext4     partition between rootfs B and data: yes = swap
                               (label swap), ext4 = ext4 labelled extra (default no)
  --size MIB                   total image size in MiB (default 128)
  --data-label LABEL           data filesystem label (default data; "" for none)
  --main-conf FILE             content of /etc/mender/mender.conf in the rootfs
  --no-main-conf               rootfs without /etc/mender/mender.conf
  --data-conf FILE             content of /mender/mender.conf in the data partition
  --no-data-conf               data partition without /mender/mender.conf
  -h, --help                   this text
Prints "pN START_BYTES SIZE_BYTES FSTYPE LABEL ROLE" per partition on stdout.
EOF
}

die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 1; }
usage_die() { printf '%s: %s (try --help)\n' "$prog" "$*" >&2; exit 2; }

# ---------------------------------------------------------------- options
table=mbr boot=yes rootfs_b=empty extra=no size=128 data_label=data
main_conf='' data_conf='' no_main_conf=0 no_data_conf=0 out=''

need_arg() { [ "$2" -ge 2 ] || usage_die "option $1 needs a value"; }
while [ $# -gt 0 ]; do
    opt=$1
    case $opt in
        --no-*=*|--help=*) usage_die "option ${opt%%=*} takes no value" ;;
        --*=*) set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; continue ;;
    esac
    case $opt in
        --table)        need_arg "$opt" $#; table=$2; shift 2 ;;
        --boot)         need_arg "$opt" $#; boot=$2; shift 2 ;;
        --rootfs-b)     need_arg "$opt" $#; rootfs_b=$2; shift 2 ;;
        --extra)        need_arg "$opt" $#; extra=$2; shift 2 ;;
        --size)         need_arg "$opt" $#; size=$2; shift 2 ;;
        --data-label)   need_arg "$opt" $#; data_label=$2; shift 2 ;;
        --main-conf)    need_arg "$opt" $#; main_conf=$2; shift 2 ;;
        --data-conf)    need_arg "$opt" $#; data_conf=$2; shift 2 ;;
        --no-main-conf) no_main_conf=1; shift ;;
        --no-data-conf) no_data_conf=1; shift ;;
        -h|--help)      usage; exit 0 ;;
        --)             shift; break ;;
        -*)             usage_die "unknown option $opt" ;;
        *)              [ -z "$out" ] || usage_die "more than one OUTPUT given"
                        out=$opt; shift ;;
    esac
done
if [ $# -gt 0 ]; then
    if [ -n "$out" ] || [ $# -ne 1 ]; then usage_die "more than one OUTPUT given"; fi
    out=$1
fi
[ -n "$out" ] || usage_die "no OUTPUT image given"

case $table in mbr|gpt) ;; *) usage_die "--table must be mbr or gpt" ;; esac
case $boot in yes|no) ;; *) usage_die "--boot must be yes or no" ;; esac
case $rootfs_b in full|empty|none) ;; *) usage_die "--rootfs-b must be full, empty or none" ;; esac
case $extra in
    no) ;; yes|swap) extra=swap ;; ext4) ;;
    *) usage_die "--extra must be no, yes, swap or ext4" ;;
esac
case $size in ''|*[!0-9]*) usage_die "--size must be a whole number of MiB" ;; esac
size=$((10#$size))
[ "$(printf %s "$data_label" | wc -c)" -le 16 ] || usage_die "--data-label is longer than 16 bytes"
case $data_label in *[[:space:]]*|-) usage_die "--data-label must not contain blanks or be \"-\"" ;; esac
if [ -n "$main_conf" ] && [ "$no_main_conf" = 1 ]; then
    usage_die "--main-conf and --no-main-conf exclude each other"
fi
if [ -n "$data_conf" ] && [ "$no_data_conf" = 1 ]; then
    usage_die "--data-conf and --no-data-conf exclude each other"
fi
for f in "$main_conf" "$data_conf"; do
    if [ -n "$f" ] && ! { [ -f "$f" ] && [ -r "$f" ]; }; then
        die "cannot read $f"
    fi
done

need_tool() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (install $2)"; }
need_tool sfdisk "util-linux fdisk"
need_tool mkfs.ext4 e2fsprogs
need_tool debugfs e2fsprogs
need_tool truncate coreutils
if [ "$boot" = yes ]; then
    need_tool mkfs.vfat dosfstools
    mkfs.vfat --help 2>&1 | grep -q -- '--offset' ||
        die "mkfs.vfat has no --offset (dosfstools 4.2 or later needed)"
fi
if [ "$extra" = swap ]; then
    need_tool mkswap util-linux
    need_tool dd coreutils
fi

# ---------------------------------------------------------------- layout (MiB)
MiB=1048576
clamp() { local v=$1; [ "$v" -ge "$2" ] || v=$2; [ "$v" -le "$3" ] || v=$3; echo "$v"; }

nparts=3
[ "$boot" = yes ] && nparts=$((nparts + 1))
[ "$extra" != no ] && nparts=$((nparts + 1))
logical=0
[ "$table" = mbr ] && [ "$nparts" -gt 4 ] && logical=1
gpt_tail=0
[ "$table" = gpt ] && gpt_tail=1

boot_mb=0 extra_mb=0
[ "$boot" = yes ] && boot_mb=$(clamp $((size / 8)) 4 16)
[ "$extra" != no ] && extra_mb=$(clamp $((size / 16)) 4 256)
data_min=$(clamp $((size / 8)) 16 "$size")
# 1 MiB before the first partition, the GPT backup, one EBR MiB per logical
overhead=$((1 + gpt_tail + 2 * logical))
avail=$((size - overhead - boot_mb - extra_mb))
rootfs_mb=$(((avail - data_min) / 2))
min_rootfs=8
if [ "$rootfs_mb" -lt "$min_rootfs" ]; then
    die "--size $size is too small for this layout (rootfs would get ${rootfs_mb} MiB, need $min_rootfs)"
fi
data_mb=$((avail - 2 * rootfs_mb))
if [ "$table" = mbr ] && [ "$size" -gt 2097151 ]; then
    die "--size $size is too large for an MBR table (2 TiB at most)"
fi

# partition list: num start_mib size_mib fstype label role
parts=()
sfd=()
cur=1
num=1
if [ "$table" = gpt ]; then
    T_BOOT=C12A7328-F81F-11D2-BA4B-00A0C93EC93B   # EFI system (as uefiimg)
    T_LINUX=0FC63DAF-8483-4772-8E79-3D69D8477DE4
    T_SWAP=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F
else
    T_BOOT=c T_LINUX=83 T_SWAP=82
fi
add() { # fstype label role size_mib type [bootable]
    parts+=("$num $cur $4 $1 ${2:--} $3")
    sfd+=("start=$((cur * 2048)), size=$(($4 * 2048)), type=$5${6:+, bootable}")
    cur=$((cur + $4))
    num=$((num + 1))
}
if [ "$boot" = yes ]; then add vfat BOOT boot "$boot_mb" "$T_BOOT" bootable; fi
add ext4 "" rootfsA "$rootfs_mb" "$T_LINUX"
num_a=$((num - 1))
case $rootfs_b in none) fs_b=none ;; *) fs_b=ext4 ;; esac
add "$fs_b" "" rootfsB "$rootfs_mb" "$T_LINUX"
num_b=$((num - 1))
if [ "$logical" = 1 ]; then
    # extended container from here to the end of the disk; logical
    # partitions each leave 1 MiB in front of them for their EBR
    sfd+=("start=$((cur * 2048)), size=$(((size - cur) * 2048)), type=5")
    num=5
    cur=$((cur + 1))
fi
if [ "$extra" = swap ]; then add swap swap extra "$extra_mb" "$T_SWAP"; fi
if [ "$extra" = ext4 ]; then add ext4 extra extra "$extra_mb" "$T_LINUX"; fi
[ "$logical" = 1 ] && cur=$((cur + 1))
add ext4 "$data_label" data "$data_mb" "$T_LINUX"
[ "$cur" -eq $((size - gpt_tail)) ] || die "internal error: layout ends at $cur MiB, not $((size - gpt_tail))"

# ---------------------------------------------------------------- scratch space
tmp=
out_tmp=
cleanup() { rm -rf "$tmp"; [ -z "$out_tmp" ] || rm -f "$out_tmp"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
tmp=$(mktemp -d "${TMPDIR:-/tmp}/mkmenderimg.XXXXXX") || die "cannot create a temporary directory"
outdir=$(dirname -- "$out")
[ -d "$outdir" ] || die "directory $outdir does not exist"
out_tmp=$(mktemp "$outdir/.mkmenderimg.XXXXXX") || die "cannot create a file in $outdir"

# run CMD...: output kept aside; on failure die with the last line of its
# stderr that is not a version banner (else the last line of its stdout)
run() {
    local msg rc=0
    "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -ne 0 ]; then
        msg=$(grep -v -E '^[[:space:]]*$|^[[:alnum:]._-]+ [0-9][0-9.]* \(' "$tmp/err" | tail -n 1)
        [ -n "$msg" ] || msg=$(grep -v '^[[:space:]]*$' "$tmp/out" | tail -n 1)
        die "$1 failed: ${msg:-exit status $rc}"
    fi
}

uuid() {
    if [ -r /proc/sys/kernel/random/uuid ]; then cat /proc/sys/kernel/random/uuid
    else uuidgen; fi
}

epoch=${SOURCE_DATE_EPOCH:-$(date +%s)}
case $epoch in ''|*[!0-9]*) die "SOURCE_DATE_EPOCH must be a number of seconds" ;; esac
export E2FSPROGS_FAKE_TIME=$epoch

# ---------------------------------------------------------------- trees
dev=/dev/mmcblk0p
root=$tmp/rootfs
mkdir -p "$root/etc/mender" "$root/usr/share/mender/identity" "$root/data" "$root/var/lib"
if [ "$no_main_conf" = 0 ]; then
    if [ -n "$main_conf" ]; then
        cat -- "$main_conf" >"$root/etc/mender/mender.conf"
    else
        cat >"$root/etc/mender/mender.conf" <<'EOF'
{
    "InventoryPollIntervalSeconds": 28800,
    "RetryPollIntervalSeconds": 300,
    "ServerURL": "https://docker.mender.io",
    "UpdatePollIntervalSeconds": 1800
}
EOF
    fi
    chmod 0600 "$root/etc/mender/mender.conf"
fi
echo "artifact_name=release-1" >"$root/etc/mender/artifact_info"
cat >"$root/etc/os-release" <<'EOF'
ID=poky
NAME="Poky (Yocto Project Reference Distro)"
VERSION="4.0.15 (kirkstone)"
VERSION_ID=4.0.15
PRETTY_NAME="Poky (Yocto Project Reference Distro) 4.0.15 (kirkstone)"
VARIANT="provstation test image (mkmenderimg.sh)"
EOF
cat >"$root/usr/share/mender/identity/mender-device-identity" <<'EOF'
#!/bin/sh
# Mender device identity: print key=value lines on stdout.
# Like Mender's default script: the MAC address of the first Ethernet interface.
set -eu
for dev in /sys/class/net/*; do
    [ -r "$dev/type" ] && [ "$(cat "$dev/type")" = 1 ] || continue
    mac=$(cat "$dev/address")
    [ "$mac" != 00:00:00:00:00:00 ] || continue
    echo "mac=$mac"
    exit 0
done
echo "mender-device-identity: no Ethernet interface found" >&2
exit 1
EOF
chmod 0755 "$root/usr/share/mender/identity/mender-device-identity"
ln -s /data/mender "$root/var/lib/mender"

data=$tmp/data
mkdir -p "$data/mender"
if [ "$no_data_conf" = 0 ]; then
    if [ -n "$data_conf" ]; then
        cat -- "$data_conf" >"$data/mender/mender.conf"
    else
        printf '{\n    "RootfsPartA": "%s",\n    "RootfsPartB": "%s"\n}\n' \
            "$dev$num_a" "$dev$num_b" >"$data/mender/mender.conf"
    fi
    chmod 0600 "$data/mender/mender.conf"
fi
echo "device_type=raspberrypi4" >"$data/mender/device_type"
chmod 0444 "$data/mender/device_type"
mkdir -p "$tmp/empty"
find "$root" "$data" "$tmp/empty" -type d -exec chmod 0755 {} +
find "$root" "$data" "$tmp/empty" -exec touch -h -d "@$epoch" {} +

# ---------------------------------------------------------------- image
run truncate -s "$((size * MiB))" "$out_tmp"
printf 'label: %s\nunit: sectors\n' "$([ "$table" = gpt ] && echo gpt || echo dos)" >"$tmp/table"
printf '%s\n' "${sfd[@]}" >>"$tmp/table"
run sfdisk -q --no-reread --no-tell-kernel "$out_tmp" <"$tmp/table"

# mkext4 START_MIB SIZE_MIB LABEL SRCDIR UUID HASHSEED
mkext4() {
    local off=$(($1 * MiB)) args
    args=(-q -F -t ext4 -U "$5"
          -E "offset=$off,lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0,hash_seed=$6")
    [ -z "$3" ] || args+=(-L "$3")
    run mkfs.ext4 "${args[@]}" -d "$4" "$out_tmp" "$(($2 * 1024))k"
    # mkfs.ext4 -d copies the source owner: make every inode root:root
    (cd "$4" && find . -print) | sed 's|^\.||; s|^$|/|' | while IFS= read -r p; do
        printf 'sif %s uid 0\nsif %s gid 0\n' "$p" "$p"
    done >"$tmp/sif"
    printf 'sif /lost+found uid 0\nsif /lost+found gid 0\n' >>"$tmp/sif"
    # debugfs exits 0 even when a command fails: any stderr line but its
    # banner is an error
    run debugfs -w -f "$tmp/sif" "$out_tmp?offset=$off"
    if grep -v -E '^debugfs [0-9]' "$tmp/err" | grep -q .; then
        die "debugfs: $(grep -v -E '^debugfs [0-9]' "$tmp/err" | head -n 1)"
    fi
}

for p in "${parts[@]}"; do
    read -r n start psize fstype label role <<<"$p"
    [ "$label" = - ] && label=
    case $role:$fstype in
        boot:vfat)
            # FAT type and geometry given explicitly: left alone, mkfs.vfat
            # decides them from the size of the whole image file (FAT32
            # and 255/63 on a large image, which then fails or trims the
            # filesystem to a track multiple); 64/32 = 1 MiB cylinders.
            fat=16
            [ "$psize" -lt 16 ] && fat=12
            run mkfs.vfat -F "$fat" -g 64/32 --mbr=n -n BOOT \
                --offset="$((start * 2048))" -h "$((start * 2048))" \
                "$out_tmp" "$((psize * 1024))" ;;
        rootfsA:ext4)
            uuid_a=$(uuid) seed_a=$(uuid)
            mkext4 "$start" "$psize" "" "$root" "$uuid_a" "$seed_a" ;;
        rootfsB:ext4)
            if [ "$rootfs_b" = full ]; then
                # same tree, UUID, hash seed and time: a byte-identical copy
                mkext4 "$start" "$psize" "" "$root" "$uuid_a" "$seed_a"
            else
                mkext4 "$start" "$psize" "" "$tmp/empty" "$(uuid)" "$(uuid)"
            fi ;;
        rootfsB:none) ;;
        extra:swap)
            run truncate -s "$((psize * MiB))" "$tmp/swap"
            run mkswap -p 4096 -L swap "$tmp/swap"
            run dd if="$tmp/swap" of="$out_tmp" bs=4096 count=1 \
                seek="$((start * 256))" conv=notrunc status=none
            rm -f "$tmp/swap" ;;
        extra:ext4)
            mkext4 "$start" "$psize" extra "$tmp/empty" "$(uuid)" "$(uuid)" ;;
        data:ext4)
            mkext4 "$start" "$psize" "$data_label" "$data" "$(uuid)" "$(uuid)" ;;
        *) die "internal error: $role $fstype" ;;
    esac
done

[ "$(stat -c %s "$out_tmp")" -eq "$((size * MiB))" ] || die "internal error: image size changed"
chmod 0644 "$out_tmp"
mv -f -- "$out_tmp" "$out" || die "cannot rename the image to $out"
out_tmp=

for p in "${parts[@]}"; do
    read -r n start psize fstype label role <<<"$p"
    echo "p$n $((start * MiB)) $((psize * MiB)) $fstype $label $role"
done
