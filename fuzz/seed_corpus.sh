#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from ../shared/corpus (the shared corpus stays
# the single copy; see its SOURCES.md for origins and licences).
#   parse, ack_roundtrip: each message as is (ack_roundtrip gets a selector
#   byte and a NUL-terminated error text in front);
#   framer: 8 seed bytes, then each message MLLP-framed, plus two messages
#   back to back with junk between them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:-"$here/../../shared/corpus"}
mkdir -p "$here/corpus/parse" "$here/corpus/ack_roundtrip" "$here/corpus/framer"
prev=""
for f in "$src"/*.hl7; do
  name=$(basename "$f" .hl7)
  cp "$f" "$here/corpus/parse/$name"
  { printf '\x81bad | text ^ here\x00'; cat "$f"; } > "$here/corpus/ack_roundtrip/$name"
  { printf 'seed%04d' "${#name}"; printf '\x0b'; cat "$f"; printf '\x1c\r'; } > "$here/corpus/framer/$name"
  if [ -n "$prev" ]; then
    { printf 'pair%04d' "${#name}"; printf '\x0b'; cat "$prev"; printf '\x1c \r\n\x0b'; cat "$f"; printf '\x1c'; } > "$here/corpus/framer/pair_$name"
  fi
  prev=$f
done
echo "seeded $(ls "$here/corpus/parse" | wc -l) messages into $here/corpus/{parse,ack_roundtrip,framer}"
