#!/bin/sh
# A DNS-01 exec hook following lego's `exec` provider contract, used by tests/test_dns01_e2e.py
# and shown in the README: `hook present|cleanup FQDN. VALUE` adds or removes one TXT value with
# nsupdate, signed with the TSIG key in $TSIG_KEY_FILE, at the primary $DNS_SERVER ($DNS_PORT).
# With HOOK_LOG set it also appends its arguments there, and its environment to $HOOK_LOG.env
# (the tests check the contract).
set -eu
action=$1 fqdn=$2 value=$3
if [ -n "${HOOK_LOG:-}" ]; then
    printf '%s\n' "$*" >> "$HOOK_LOG"
    env >> "$HOOK_LOG.env"
fi
case "$action" in
    present) op="update add $fqdn 60 TXT \"$value\"" ;;
    cleanup) op="update delete $fqdn TXT \"$value\"" ;;
    *) echo "unknown action $action" >&2; exit 2 ;;
esac
printf 'server %s %s\n%s\nsend\n' "${DNS_SERVER:-127.0.0.1}" "${DNS_PORT:-53}" "$op" \
    | nsupdate -k "$TSIG_KEY_FILE"
