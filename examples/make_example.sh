#!/bin/sh
# Render the bundled example: 15 s of drums + bass from the test split (TimGM6mb soundfont, a seed no
# training or evaluation split uses), with its true stems for `lass separate --reference`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
lass synth "$work" --tracks 1 --seed 2026 --split test --seconds 15 --quiet
cp "$work/test/Track00001/mix.flac" "$here/mix.flac"
mkdir -p "$here/reference"
cp "$work/test/Track00001/stems/S00.flac" "$here/reference/drums.flac"
cp "$work/test/Track00001/stems/S01.flac" "$here/reference/bass.flac"
rm -rf "$work"
