#!/usr/bin/env bash
# Build ./Dockerfile for real and run the image, on a machine with neither Docker nor a reachable
# image registry (`make image-check`).
#
#   1. apt-get installs buildah and debootstrap if they are missing (needs root);
#   2. debootstrap makes a Debian bookworm base with python3 + python3-venv, from the mirror the
#      host's apt already uses; the tarball is cached in .image-cache/ and imported into a
#      private buildah store there (vfs driver: no overlay or fuse needed);
#   3. `buildah bud --isolation chroot` builds the Dockerfile with BASE_IMAGE=<that base>, never
#      pulling anything; pip reaches PyPI through the host's CA bundle (build secret pip_cert);
#   4. checks the image's config (non-root USER, ENTRYPOINT, CMD, STOPSIGNAL, OCI labels) and
#      runs its entrypoint as that user on a read-only root with a tmpfs /tmp and the examples
#      mounted read-only at /etc/aml-worker (as the deployment mounts the rules): --help,
#      check-rules, a replay dry run, and a comparison of the installed distributions with
#      constraints.txt.
#
# Options: --update-constraints rewrites constraints.txt (the image's dependency pins) from a
# fresh resolve of pyproject.toml with the host's python3 (3.11, like the image) and exits.
# Environment: DEBIAN_MIRROR (default: the host's apt mirror), IMAGE_CACHE (default
# .image-cache), IMAGE_STORAGE_DRIVER (default vfs), IMAGE_NAME (default
# localhost/aml-event-worker:check), IMAGE_ARCHIVE (also write the image there as a
# docker-archive, for `docker load` / `podman load`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv
CACHE=${IMAGE_CACHE:-$ROOT/.image-cache}
DRIVER=${IMAGE_STORAGE_DRIVER:-vfs}
IMAGE=${IMAGE_NAME:-localhost/aml-event-worker:check}
STARTED=$SECONDS

log() { printf '[image-check +%ss] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }
die() {
    printf '[image-check] error: %s\n' "$*" >&2
    exit 1
}

# --- constraints.txt -------------------------------------------------------------------------

update_constraints() {
    local python=${PYTHON:-python3} tmp
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
        die "$python is not Python 3.11 (the image's); set PYTHON=/path/to/python3.11"
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: tmp is local
    trap "rm -rf '$tmp'" EXIT
    # A copy, so the build leaves no build/ or egg-info behind in the work tree.
    cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/worker" "$tmp/"
    "$python" -m venv "$tmp/venv"
    # Plain PyPI resolution: no host pip configuration (extra indexes, global constraints).
    export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
    "$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
    "$tmp/venv/bin/python" -m pip install --quiet "$tmp"
    local build_requires
    build_requires=$("$tmp/venv/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))' \
        "$ROOT/pyproject.toml")
    {
        echo "# The image's dependency pins (Dockerfile: PIP_CONSTRAINT). Linux, Python 3.11."
        echo "# Regenerate after changing dependencies: bash scripts/image-check.sh --update-constraints"
        echo "# Runtime: everything \`pip install .\` installs; make image-check compares the image with it."
        "$tmp/venv/bin/python" -m pip freeze --exclude-editable |
            grep -v -i '^aml-event-worker' | LC_ALL=C sort -f
        echo "# Build backend only ([build-system] requires), not installed in the image:"
        # shellcheck disable=SC2086  # one requirement per word
        "$tmp/venv/bin/python" -m pip install --quiet --upgrade $build_requires
        for req in $build_requires; do
            name=$(printf '%s' "$req" | sed 's/[<>=!~; \[].*//')
            "$tmp/venv/bin/python" -m pip freeze --all | grep -i "^$name=="
        done
    } >"$tmp/constraints.txt"
    mv "$tmp/constraints.txt" "$ROOT/constraints.txt"
    log "wrote constraints.txt ($(grep -c '==' "$ROOT/constraints.txt") pins)"
}

if [[ ${1:-} == --update-constraints ]]; then
    update_constraints
    exit 0
elif [[ $# -gt 0 ]]; then
    die "unknown argument $1 (the only option is --update-constraints)"
fi

# --- tools -----------------------------------------------------------------------------------

[[ $(id -u) == 0 ]] || die "run as root: debootstrap, and buildah with chroot isolation, need it"
mkdir -p "$CACHE"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
[[ -e /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
command -v unshare >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "need ${missing[*]}, and this is not a Debian machine"
    log "installing ${missing[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >"$CACHE/apt.log" 2>&1; then
        tail -n 20 "$CACHE/apt.log" >&2
        die "apt-get install ${missing[*]} failed (log: $CACHE/apt.log)"
    fi
fi
B=(buildah --root "$CACHE/storage" --runroot "$CACHE/runroot" --storage-driver "$DRIVER")

# --- the Debian base -------------------------------------------------------------------------

# The URI of the host's apt source for $SUITE (deb822 .sources or one-line .list), else of its
# first Debian-looking source that is not the security archive (a newer host still has a mirror
# carrying bookworm).
host_mirror() {
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    awk -v suite="$SUITE" '
        function flush() {
            if (uri != "" && enabled && types ~ /(^| )deb( |$)/) emit(uri, suites)
            uri = ""; suites = ""; types = ""; enabled = 1
        }
        function emit(u, s,   n, i, parts) {
            n = split(s, parts, " ")
            for (i = 1; i <= n; i++) {
                if (parts[i] == suite && exact == "") exact = u
                if (parts[i] !~ /-security$/ && other == "") other = u
            }
        }
        FNR == 1 { flush() }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            if ($0 ~ /^[ \t]*#/) next
            key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
            if (key == "uris") uri = $1
            else if (key == "suites") suites = $0
            else if (key == "types") types = $0
            else if (key == "enabled") enabled = (tolower($0) != "no")
            next
        }
        /^[ \t]*deb[ \t]/ {
            i = 2
            if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            emit($i, $(i + 1))
        }
        END { flush(); if (exact != "") print exact; else if (other != "") print other }
    ' "${files[@]}"
}

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
key=$SUITE-$arch-$(printf '%s' "$BASE_PACKAGES" | sha256sum | cut -c1-12)
BASE_TAR=$CACHE/base-$key.tar
BASE_REF=localhost/aml-event-worker-base:$key

if [[ ! -s $BASE_TAR ]]; then
    mirror=${DEBIAN_MIRROR:-$(host_mirror)}
    [[ -n $mirror ]] || die "no apt source found in /etc/apt; set DEBIAN_MIRROR to a Debian mirror"
    log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from $mirror"
    work=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
    # --one-file-system: never descend into a /proc, /sys or /dev that a failed debootstrap
    # left mounted inside the target.
    cleanup_work() {
        local m
        for m in proc sys dev/pts dev; do
            umount -l "$work/rootfs/$m" 2>/dev/null || true
        done
        rm -rf --one-file-system "$work"
    }
    trap cleanup_work EXIT
    if ! debootstrap --variant=minbase --components=main --include="$BASE_PACKAGES" \
        "$SUITE" "$work/rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1; then
        tail -n 30 "$CACHE/debootstrap.log" >&2
        die "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    # Slim it like the official slim images: no package cache or lists, docs but the copyrights,
    # no man pages or translations; no host resolver configuration.
    (
        cd "$work/rootfs"
        rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/* \
            usr/share/man/* usr/share/info/* usr/share/locale/* var/log/*.log
        find usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
        : >etc/resolv.conf
        rm -f etc/hostname
    )
    tar --numeric-owner --xattrs -C "$work/rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
        -cf "$BASE_TAR.part" .
    mv "$BASE_TAR.part" "$BASE_TAR"
    cleanup_work
    trap - EXIT
    log "base tarball: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
fi

if ! "${B[@]}" inspect --type image "$BASE_REF" >/dev/null 2>&1; then
    log "importing the base as $BASE_REF"
    ctr=$("${B[@]}" from --pull=never scratch)
    "${B[@]}" add "$ctr" "$BASE_TAR" / >/dev/null
    "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/sh \
        --label org.opencontainers.image.description="debootstrap $SUITE minbase + $BASE_PACKAGES" \
        "$ctr"
    "${B[@]}" commit --quiet --rm "$ctr" "$BASE_REF" >/dev/null
fi

# --- build -----------------------------------------------------------------------------------

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/pyproject.toml" | head -n 1)
revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
build_args=(--build-arg "BASE_IMAGE=$BASE_REF" --build-arg "VERSION=$version"
    --build-arg "REVISION=$revision")
# pip inside the build trusts what the host trusts (a TLS-intercepting proxy's CA included).
for ca in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" \
    /etc/ssl/certs/ca-certificates.crt; do
    if [[ -n $ca && -s $ca ]]; then
        build_args+=(--secret "id=pip_cert,src=$ca")
        break
    fi
done
log "building $IMAGE on $BASE_REF (log: $CACHE/build.log)"
build_started=$SECONDS
if ! "${B[@]}" bud --isolation chroot --pull=never --layers=false "${build_args[@]}" \
    -f "$ROOT/Dockerfile" -t "$IMAGE" "$ROOT" >"$CACHE/build.log" 2>&1; then
    tail -n 40 "$CACHE/build.log" >&2
    die "buildah bud failed (log: $CACHE/build.log)"
fi
"${B[@]}" rmi --prune >/dev/null 2>&1 || true # the previous build's image, now untagged
log "built in $((SECONDS - build_started))s; $("${B[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE")"

# --- the image's configuration ---------------------------------------------------------------

failures=0
fail() {
    printf '[image-check] FAIL: %s\n' "$*" >&2
    failures=$((failures + 1))
}
inspect() { "${B[@]}" inspect --type image --format "$1" "$IMAGE"; }

user=$(inspect '{{.OCIv1.Config.User}}')
mapfile -t entrypoint < <(inspect '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}')
mapfile -t cmd < <(inspect '{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}')
stopsignal=$(inspect '{{.Docker.Config.StopSignal}}')
workdir=$(inspect '{{.OCIv1.Config.WorkingDir}}')
mapfile -t image_env < <(inspect '{{range .OCIv1.Config.Env}}{{println .}}{{end}}')
label() { inspect "{{index .OCIv1.Config.Labels \"org.opencontainers.image.$1\"}}"; }

[[ $user =~ ^[0-9]+:[0-9]+$ && ${user%%:*} != 0 ]] ||
    fail "USER is '$user', not a numeric non-root uid:gid"
[[ ${entrypoint[*]} == aml-event-worker ]] || fail "ENTRYPOINT is '${entrypoint[*]}'"
[[ ${cmd[*]} == run ]] || fail "CMD is '${cmd[*]}'"
[[ $stopsignal == SIGTERM ]] || fail "STOPSIGNAL is '$stopsignal'"
[[ $(label version) == "$version" ]] || fail "version label '$(label version)' != $version"
[[ $(label revision) == "$revision" ]] || fail "revision label '$(label revision)'"
[[ $(label base.name) == "$BASE_REF" ]] || fail "base.name label '$(label base.name)'"
for name in title description licenses; do
    [[ -n $(label "$name") ]] || fail "no org.opencontainers.image.$name label"
done
log "config: USER $user, ENTRYPOINT ${entrypoint[*]}, CMD ${cmd[*]}, STOPSIGNAL $stopsignal"

# --- run it: the image's user and environment, read-only root, tmpfs /tmp --------------------

ctr=$("${B[@]}" from --pull=never "$IMAGE")
run_dir=$(mktemp -d)
cleanup_run() {
    "${B[@]}" umount "$ctr" >/dev/null 2>&1 || true
    "${B[@]}" rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$run_dir"
}
trap cleanup_run EXIT
mnt=$("${B[@]}" mount "$ctr")
printf '%s\n' "${image_env[@]}" >"$run_dir/env"

# in_image USER CMD...: CMD in a private mount and PID namespace, chrooted into the image's
# root bind-mounted read-only, with a fresh tmpfs on /tmp, a minimal /dev, and examples/ at
# /etc/aml-worker (read-only); only the image's environment; in its working directory.
in_image() {
    local as=$1
    shift
    # shellcheck disable=SC2016  # the inner script expands its own arguments
    unshare --mount --pid --fork --kill-child -- bash -euo pipefail -c '
        mnt=$1 as=$2 workdir=$3 envfile=$4 examples=$5
        shift 5
        mount --make-rprivate /
        mount --bind "$mnt" "$mnt"
        mount -o remount,bind,ro "$mnt"
        mount -t tmpfs -o nosuid,nodev,mode=1777,size=64m tmpfs "$mnt/tmp"
        mount -t proc -o nosuid,nodev,noexec proc "$mnt/proc"
        mount -t tmpfs -o nosuid,noexec,mode=755,size=64k tmpfs "$mnt/dev"
        for dev in null zero full random urandom; do
            touch "$mnt/dev/$dev"
            mount --bind "/dev/$dev" "$mnt/dev/$dev"
        done
        mount --bind "$examples" "$mnt/etc/aml-worker"
        mount -o remount,bind,ro "$mnt/etc/aml-worker"
        mapfile -t env <"$envfile"
        exec chroot --userspec="$as" "$mnt" /usr/bin/env -i "${env[@]}" \
            /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$workdir" "$@"
    ' in_image "$mnt" "$as" "${workdir:-/}" "$run_dir/env" "$ROOT/examples" "$@"
}

# The harness itself: the root really is read-only, /tmp really is writable.
if in_image 0:0 touch /ro-probe 2>/dev/null; then
    fail "the root filesystem is writable in the check harness"
fi
in_image 0:0 touch /tmp/rw-probe || fail "/tmp is not writable in the check harness"

# shellcheck disable=SC2016  # expanded inside the image
ids=$(in_image "$user" sh -c 'echo "$(id -u):$(id -g)"' 2>&1) || fail "id: $ids"
[[ $ids == "$user" ]] || fail "running as uid:gid '$ids', want $user"
log "runs as uid:gid $ids (non-root), root filesystem read-only, /tmp a tmpfs"

if out=$(in_image "$user" "${entrypoint[@]}" --help 2>&1) && [[ $out == *"check-rules"* ]]; then
    log "${entrypoint[*]} --help: ok ($(printf '%s\n' "$out" | head -n 1))"
else
    fail "${entrypoint[*]} --help: $out"
fi

if out=$(in_image "$user" "${entrypoint[@]}" check-rules --allow-missing-secrets \
    /etc/aml-worker/rules.yaml 2>&1); then
    log "${entrypoint[*]} check-rules /etc/aml-worker/rules.yaml: ok"
else
    fail "check-rules: $out"
fi

# A dry-run replay writes its plan to stdout and its dead letters to the working dir (/tmp).
if plan=$(in_image "$user" "${entrypoint[@]}" replay --rules /etc/aml-worker/rules.yaml \
    --source file:/etc/aml-worker/stream.jsonl --dry-run --output - 2>"$run_dir/replay.err") &&
    [[ -n $plan ]]; then
    log "replay --dry-run of examples/stream.jsonl: ok, $(printf '%s\n' "$plan" | wc -l) planned actions"
else
    fail "replay --dry-run: $(tail -n 5 "$run_dir/replay.err")"
fi

# The image holds exactly constraints.txt's runtime pins, no more, no fewer.
# normalize: names as PEP 503 compares them (lowercase, runs of -_. as one -), sorted.
normalize() {
    awk -F'==' '{ n = tolower($1); gsub(/[-_.]+/, "-", n); print n (NF > 1 ? "==" $2 : "") }' |
        LC_ALL=C sort -u
}
build_only=$(sed -n 's/^requires = \[\(.*\)\]$/\1/p' "$ROOT/pyproject.toml" |
    tr -d '" ' | tr ',' '\n' | sed 's/[<>=!~;[].*//' | grep -v '^$' | normalize)
pins=$(sed 's/ *#.*//' "$ROOT/constraints.txt" | grep '==' | normalize |
    awk -F'==' -v skip="$(tr '\n' ' ' <<<"$build_only")" \
        'BEGIN { n = split(skip, s, " "); for (i = 1; i <= n; i++) b[s[i]] = 1 } !($1 in b)')
if installed=$(in_image "$user" python3 -c 'import importlib.metadata as m
for d in m.distributions():
    name = d.metadata["Name"]
    if name != "aml-event-worker":
        print(name + "==" + d.version)' 2>&1); then
    installed=$(normalize <<<"$installed")
    if [[ $installed == "$pins" ]]; then
        log "installed distributions = constraints.txt ($(wc -l <<<"$pins") pins)"
    else
        fail "the image's distributions differ from constraints.txt (< image, > constraints):
$(diff <(printf '%s\n' "$installed") <(printf '%s\n' "$pins") | grep '^[<>]')"
    fi
else
    fail "listing the installed distributions: $installed"
fi

if [[ -n ${IMAGE_ARCHIVE:-} ]]; then
    "${B[@]}" push --quiet "$IMAGE" "docker-archive:$IMAGE_ARCHIVE:aml-event-worker:$version"
    log "wrote $IMAGE_ARCHIVE (docker load -i / podman load -i)"
fi

((failures == 0)) || die "$failures check(s) failed"
log "image-check passed: $IMAGE (store: $CACHE/storage, driver $DRIVER)"
