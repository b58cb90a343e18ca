# Shared by container/*.sh (sourced). Settings for running containers with podman on
# machines like CI's: runc (crun rejects the hybrid cgroup layout), and explicit ulimits
# no higher than the hard limits (podman's defaults exceed them and runc fails with
# "error setting rlimit ... operation not permitted").

# podman run options for such machines. Measured here: nofile at most the hard limit
# (20000), nproc at most kernel.pid_max (32768) although the hard limit is higher.
podman_run_options() {
    local nofile nproc pid_max
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
    [[ "$nofile" == unlimited ]] && nofile=65536
    [[ "$nproc" == unlimited ]] && nproc=$pid_max
    ((nofile > 65536)) && nofile=65536
    ((nproc > pid_max)) && nproc=$pid_max
    printf '%s\n' --runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc"
}

# Run a command, retrying it (3 tries in all) when it fails with the transient error
# that buildah and podman sometimes hit in sandboxed kernels such as gVisor when they
# re-execute themselves ("Close_Fd sealing memfd copy: Device or resource busy").
# Its stderr goes to stderr; any other failure is returned at once.
retry_transient() {
    local attempt err status
    err=$(mktemp)
    for attempt in 1 2 3; do
        status=0
        "$@" 2>"$err" || status=$?
        cat "$err" >&2
        if ((status == 0)) || ! grep -q 'sealing memfd' "$err" || ((attempt == 3)); then
            rm -f "$err"
            return "$status"
        fi
        printf '[retry] transient "sealing memfd" failure of %s; trying again\n' "$1" >&2
        sleep 2
    done
}
