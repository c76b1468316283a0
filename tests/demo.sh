#!/usr/bin/env bash
# The demo: builds everything, starts the cloud emulator with a seeded
# Office365 inbox and Gmail INBOX, logs in without a person (auto-approve +
# BROWSER), and syncs into ./demo/mail. With --once it exits after one full
# cycle; without, it keeps syncing until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ONCE=()
[ "${1:-}" = "--once" ] && ONCE=(--once)

cargo build --release --workspace --bins
BIN=$ROOT/target/release
DEMO=$ROOT/demo
O365_USER=demo@contoso.example
GMAIL_USER=demo@gmail.example

# A fresh demo each time (only the demo's own folder is touched).
rm -rf "$DEMO"
mkdir -p "$DEMO/home"

"$BIN/cms-fakecloud" --seed 7 --auto-approve \
    --populate-o365 "$O365_USER:Inbox:300" \
    --populate-gmail "$GMAIL_USER:INBOX:300" >"$DEMO/fakecloud.out" 2>"$DEMO/fakecloud.log" &
EMU=$!
trap 'kill $EMU 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    grep -q '^listening on ' "$DEMO/fakecloud.out" 2>/dev/null && break
    sleep 0.1
done
URL=$(sed -n 's/^listening on //p' "$DEMO/fakecloud.out")
[ -n "$URL" ] || { echo "demo: the emulator did not start; see $DEMO/fakecloud.log" >&2; exit 1; }
echo "demo: emulated cloud at $URL (300 Office365 + 300 Gmail messages)"

# The example config, with this demo's home so nothing touches ~/mail.
cp "$ROOT/cms.cfg.example" "$DEMO/cms.cfg"

# The "browser": fetches the login URL and follows redirects back to our
# loopback server, as a person clicking through would.
cat >"$DEMO/browser.sh" <<'SH'
#!/bin/sh
exec /usr/bin/python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=60).read()' "$1"
SH
chmod +x "$DEMO/browser.sh"

cat <<MSG
demo: syncing into $DEMO/home/mail (Ctrl-C to stop)
  read it:           neomutt -f $DEMO/home/mail/work
  other folders:     $DEMO/home/mail/{personal,lists/kernel,lists/other}
  watch a flag travel back: mark a message read in neomutt, then
      curl -s '$URL/_control/mailbox?user=$O365_USER' | python3 -m json.tool | grep -c '"isRead": true'
MSG
HOME="$DEMO/home" \
CMS_CLOUD_BASE_URL="$URL" \
CMS_OAUTH_LISTEN=127.0.0.1:0 \
CMS_O365_USER=$O365_USER CMS_GMAIL_USER=$GMAIL_USER \
BROWSER="$DEMO/browser.sh" \
    "$BIN/cloud-mdir-sync" -c "$DEMO/cms.cfg" "${ONCE[@]}"
