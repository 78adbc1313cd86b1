#!/usr/bin/env bash
# Recorded human speech from Debian packages, for benchmarks/real_speech.py (evaluation only: never train or tune on it).
#
#   bash scripts/get_real_speech.sh [DIR]      (default DIR: ${VASA3D_REAL_SPEECH:-~/.cache/vasa3d/real_speech})
#
# Needs apt-get with the Debian archive in its sources (`apt-get update` once) and dpkg-deb; installs nothing:
# each package is fetched with `apt-get download` and unpacked with `dpkg -x` into DIR/<package>/, its
# copyright file is kept in DIR/licences/, and DIR/packages.tsv records package, version, licence and speaker.
# About 140 MB of downloads, 190 MB unpacked. Re-running skips the packages already unpacked at that version.
#
# What the packages hold (licences as stated in each package's debian/copyright):
#   ktuberling-data                 KDE's stamp toy: single words recorded by volunteers, one .ogg per word (44.1 kHz),
#                                   ~70 words in each of ~25 languages. GPL-2+.
#   asterisk-core-sounds-en-wav     Asterisk telephone prompts (8 kHz wav), words, numbers and whole sentences:
#   asterisk-core-sounds-es-wav       en-US and es-MX by Allison Smith (CC-BY-SA-3.0), fr-CA by June Wallack
#   asterisk-core-sounds-fr-wav       (CC-BY-SA-3.0), it-IT by Carlo Flora (CC-BY-3.0), ru-RU by Maxim Topal
#   asterisk-core-sounds-it-wav       (CC-BY-3.0).
#   asterisk-core-sounds-ru-wav
set -euo pipefail

DIR="${1:-${VASA3D_REAL_SPEECH:-$HOME/.cache/vasa3d/real_speech}}"
PACKAGES=(
  "ktuberling-data|GPL-2+|KDE translators (one volunteer per language)"
  "asterisk-core-sounds-en-wav|CC-BY-SA-3.0|Allison Smith (en-US)"
  "asterisk-core-sounds-es-wav|CC-BY-SA-3.0|Allison Smith (es-MX)"
  "asterisk-core-sounds-fr-wav|CC-BY-SA-3.0|June Wallack (fr-CA)"
  "asterisk-core-sounds-it-wav|CC-BY-3.0|Carlo Flora (it-IT)"
  "asterisk-core-sounds-ru-wav|CC-BY-3.0|Maxim Topal (ru-RU)"
)

for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "get_real_speech: $tool not found (a Debian/Ubuntu system is needed)" >&2; exit 1; }
done
mkdir -p "$DIR/licences" "$DIR/.debs"
DIR="$(cd "$DIR" && pwd)"
printf 'package\tversion\tlicence\trecorded_by\n' > "$DIR/packages.tsv.new"

for entry in "${PACKAGES[@]}"; do
  IFS='|' read -r name licence speaker <<< "$entry"
  version="$(apt-cache policy "$name" 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [[ -z "$version" || "$version" == "(none)" ]]; then
    echo "get_real_speech: package $name is not in apt's lists; run \`apt-get update\` (Debian main must be a source)" >&2
    exit 1
  fi
  stamp="$DIR/$name/.version"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
    echo "$name $version: already in $DIR/$name"
  else
    echo "$name $version: downloading"
    rm -rf "$DIR/$name" "$DIR/.debs/"*
    (cd "$DIR/.debs" && apt-get download -q "$name=$version" 2>&1 | grep -v "unsandboxed" || true)
    deb="$(ls "$DIR/.debs/"*.deb 2>/dev/null | head -n 1)"
    [[ -n "$deb" ]] || { echo "get_real_speech: apt-get download $name=$version fetched nothing" >&2; exit 1; }
    dpkg -x "$deb" "$DIR/$name"
    rm -f "$deb"
    echo "$version" > "$stamp"
  fi
  cp "$DIR/$name/usr/share/doc/$name/copyright" "$DIR/licences/$name.copyright"
  printf '%s\t%s\t%s\t%s\n' "$name" "$version" "$licence" "$speaker" >> "$DIR/packages.tsv.new"
done
mv "$DIR/packages.tsv.new" "$DIR/packages.tsv"
rmdir "$DIR/.debs" 2>/dev/null || true
echo "recorded speech ready in $DIR (see $DIR/packages.tsv); run: python benchmarks/real_speech.py --data $DIR --avatar ..."
