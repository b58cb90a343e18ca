#!/usr/bin/env bash
# Build, from Debian packages, a local stand-in for the base image that BentoML's
# generated Dockerfile starts FROM (python:3.11-slim), for machines that have neither a
# Docker daemon nor a container registry but reach Debian's and PyPI's package mirrors.
#
#   container/build_base_image.sh [IMAGE]    # IMAGE defaults to python:3.11-slim
#
# Does nothing when the image is already in the local container storage (podman/buildah),
# so the debootstrap (about 1-2 minutes) runs once per machine. Needs root. Installs the
# tools it uses (buildah, podman, runc, netavark, iptables, debootstrap) with apt-get when
# they are missing.
#
# The stand-in is Debian bookworm, whose python3 is 3.11 like python:3.11-slim, with pip
# (PEP 668's EXTERNALLY-MANAGED marker removed: BentoML's Dockerfile runs `pip install uv`),
# /etc/hosts, and the CA certificates of this machine that Debian's bundle lacks: some
# networks re-sign TLS, and the image build downloads from PyPI. It is labelled as a
# stand-in so that nobody mistakes it for the official image.
set -euo pipefail
# shellcheck source=container/common.sh
source "$(dirname "$0")/common.sh"

IMAGE="${1:-python:3.11-slim}"
SUITE="${DEBIAN_SUITE:-bookworm}"
case "$IMAGE" in
*/*) FULL_NAME="$IMAGE" ;;
*) FULL_NAME="docker.io/library/$IMAGE" ;; # how podman and buildah name `FROM python:3.11-slim`
esac

log() { printf '[build_base_image] %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
    log "must run as root (debootstrap, and rootful podman/buildah storage)"
    exit 1
fi

ensure_tools() {
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v update-ca-certificates >/dev/null || missing+=(ca-certificates)
    # podman's network helpers (port publishing): netavark, which runs iptables.
    [[ -x /usr/lib/podman/netavark ]] || missing+=(netavark)
    command -v iptables >/dev/null || missing+=(iptables)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        local started=$SECONDS
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q buildah podman runc debootstrap ca-certificates netavark aardvark-dns iptables >/dev/null
        log "installed the container tools in $((SECONDS - started)) s"
    fi
}

# The Debian mirror this machine's apt uses (deb822 or one-line sources), else Debian's CDN.
debian_mirror() {
    local uri
    uri=$(grep -hs -m1 -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | awk '{print $2}' || true)
    [[ -n "$uri" ]] || uri=$(grep -hs -m1 -E '^deb .*/debian/? ' /etc/apt/sources.list | awk '{print $2}' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

ensure_tools
if podman image exists "$FULL_NAME"; then
    log "$FULL_NAME is in local storage; nothing to do"
    exit 0
fi

start=$(date +%s)
work=$(mktemp -d /tmp/base-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mirror=$(debian_mirror)
security_mirror="${mirror%/debian}/debian-security"
log "debootstrap $SUITE from $mirror into $rootfs"
debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates,netbase \
    "$SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    exit 1
}

# The Dockerfile creates its venv with `uv venv --python X.Y`: the stand-in must have that
# Python (uv cannot download one here). bookworm has 3.11, trixie 3.13 (DEBIAN_SUITE).
wanted=$(sed -n 's/^python:\([0-9]*\.[0-9]*\).*/\1/p' <<<"${IMAGE#docker.io/library/}")
have=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ -n "$wanted" && "$wanted" != "$have" ]]; then
    log "$IMAGE needs Python $wanted but Debian $SUITE has $have; set DEBIAN_SUITE to a suite that has it"
    exit 1
fi

# apt sources as in Debian's own images (the Dockerfile runs apt-get install).
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

cat >"$rootfs/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF

# pip into the system Python, as on python:3.11-slim (PEP 668 would refuse it).
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED

# This machine's CA certificates that Debian's bundle lacks become local CAs of the image.
mkdir -p "$rootfs/usr/local/share/ca-certificates"
if [[ -d /usr/local/share/ca-certificates ]]; then
    find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$rootfs/usr/local/share/ca-certificates/" \;
fi
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    python3 - /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt" \
        "$rootfs/usr/local/share/ca-certificates" <<'EOF'
import re, sys
from pathlib import Path
pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
host, image, extra_dir = (Path(p) for p in sys.argv[1:])
known = {"".join(c.split()) for c in pem.findall(image.read_text() if image.exists() else "")}
known |= {"".join(c.split()) for f in extra_dir.glob("*.crt") for c in pem.findall(f.read_text())}
extra = [c for c in pem.findall(host.read_text()) if "".join(c.split()) not in known]
for i, cert in enumerate(extra):
    (extra_dir / f"host-extra-{i}.crt").write_text(cert + "\n")
print(f"{len(extra)} extra CA certificate(s) from the host bundle", file=sys.stderr)
EOF
fi
chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
# uv (installed by the Dockerfile) reads the system store only when told to.
mkdir -p "$rootfs/etc/uv"
printf 'native-tls = true\n' >"$rootfs/etc/uv/uv.toml"

# Slim it like the official image: no apt lists, caches or docs.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
    "$rootfs"/root/.cache
find "$rootfs/usr/lib/python3" "$rootfs"/usr/lib/python3.* -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true

tar --numeric-owner --xattrs -C "$rootfs" -cf "$work/rootfs.tar" .
retry_transient podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL org.opencontainers.image.description=\"Local stand-in for $IMAGE: Debian $SUITE (debootstrap) with python3 and pip, built by container/build_base_image.sh\"" \
    --change "LABEL org.opencontainers.image.base.name=debian:$SUITE" \
    "$work/rootfs.tar" "$FULL_NAME" >/dev/null
mapfile -t run_options < <(podman_run_options)
python_version=$(retry_transient podman run --rm "${run_options[@]}" --network=none "$FULL_NAME" python3 --version)
log "built $FULL_NAME ($python_version) in $(($(date +%s) - start)) s, $(podman image inspect --format '{{.Size}}' "$FULL_NAME") bytes"
