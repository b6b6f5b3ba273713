#!/bin/sh
# Checks emitd's units: verify-units.sh SYSTEMD_ANALYZE SERVICE SOCKET
# SYSUSERS. Fails when systemd-analyze verify fails or says anything at all
# about our units (it only warns, exit 0, about an unknown key or a bad
# value), and when the sysusers.d entry does not create the user and groups
# that the units name.
set -u
analyze=$1 service=$2 socket=$3 sysusers=$4
fail=0

# verify never looks the user up (User= must only be a valid name, and the
# user need not exist on this machine), hence the sysusers check below.
# Errors in units ours merely depend on are the machine's, not ours.
out=$(SYSTEMD_LOG_LEVEL=info SYSTEMD_LOG_COLOR=0 "$analyze" verify \
      --man=no --recursive-errors=no "$service" "$socket" 2>&1)
rc=$?
[ -n "$out" ] && printf '%s\n' "$out"
if [ "$rc" != 0 ]; then
  echo "FAIL: systemd-analyze verify exited $rc" >&2
  fail=1
fi
if printf '%s\n' "$out" | grep -E 'emitd\.(service|socket)' >/dev/null; then
  echo "FAIL: systemd-analyze verify complained about the units" >&2
  fail=1
fi

# What sysusers would create, in an empty root (a dry run writes nothing).
root=$(mktemp -d) || exit 1
trap 'rm -rf "$root"' EXIT
mkdir "$root/etc"
created=$(systemd-sysusers --dry-run --root="$root" "$sysusers" 2>&1)
printf '%s\n' "$created"
names() {   # names KEY FILE...: the values of KEY= in the files
  key=$1; shift
  sed -n "s/^$key=//p" "$@"
}
for user in $(names User "$service"); do
  printf '%s\n' "$created" | grep -F "Creating user '$user'" >/dev/null ||
    { echo "FAIL: $sysusers does not create user $user" >&2; fail=1; }
done
for group in $(names Group "$service") $(names SocketGroup "$socket"); do
  printf '%s\n' "$created" | grep -F "Creating group '$group'" >/dev/null ||
    { echo "FAIL: $sysusers does not create group $group" >&2; fail=1; }
done
[ "$fail" = 0 ] && echo "units verified"
exit "$fail"
