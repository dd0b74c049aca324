#!/bin/sh
# Install exchange on a server, once per host, as root: the package in its own virtual
# environment /opt/exchange, the command linked as /usr/local/bin/exchange, the systemd unit, the
# `exchange` service user (systemd-sysusers) and /etc/exchange, /var/lib/exchange
# (systemd-tmpfiles). Each agency's node is then made with `exchange node init --system`.
#
#   packaging/install.sh [PACKAGE]
#
# PACKAGE is what pip installs: a wheel, or a checkout (default: the one this script is in).
# Environment:
#   PYTHON       the interpreter the environment is made from (default: python3, Python 3.11+)
#   PIP_OPTIONS  more options for pip, e.g. "--no-index --find-links /srv/wheels" on a host
#                without access to a package index
#   ROOT         install into ROOT as if it were / (default: /); tests/test_install.py does this
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
package=${1:-$here}
root=${ROOT:-}

"${PYTHON:-python3}" -m venv "$root/opt/exchange"
# shellcheck disable=SC2086 # PIP_OPTIONS is a list of options
"$root/opt/exchange/bin/pip" install --quiet ${PIP_OPTIONS:-} "$package"
install -d -m 0755 "$root/usr/local/bin"
ln -sfn /opt/exchange/bin/exchange "$root/usr/local/bin/exchange"

install -D -m 0644 "$here/systemd/exchange@.service" "$root/etc/systemd/system/exchange@.service"
install -D -m 0644 "$here/systemd/exchange.sysusers.conf" "$root/usr/lib/sysusers.d/exchange.conf"
install -D -m 0644 "$here/systemd/exchange.tmpfiles.conf" "$root/usr/lib/tmpfiles.d/exchange.conf"
install -D -m 0644 "$here/docs/operations.md" "$root/usr/share/doc/exchange/operations.md"

systemd-sysusers ${root:+--root="$root"} exchange.conf
systemd-tmpfiles ${root:+--root="$root"} --create exchange.conf
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
