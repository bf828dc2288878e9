#!/bin/bash
# ci/image-pipeline.sh RECIPE OVERLAY: the image pipeline, as a CI job runs it.
#
#   1. build RECIPE (with --locked: the lock must match the recipe), signing
#      the image, manifest, SBOM and provenance statement when a key is given
#   2. boot it with OVERLAY's seed and check it as a Matrix client would
#      (the report: $MIMG_OUT/NAME.test.json)
#   3. check the signatures and that the SBOM and statement name the image
#   4. say what changed against the image in production (its manifest)
#   5. push the build to the shared cache, when one is configured
#
# Environment (all optional):
#   MIMG                 the mimg binary (default: mimg on PATH)
#   MIMG_OUT             output directory (default: images)
#   MIMG_BUILD_FLAGS     flags for mimg build (default: --locked)
#   MIMG_TEST_FLAGS      more flags for mimg test (e.g. --data-disk FILE to
#                        keep the test's data for an upgrade check)
#   MIMG_SIGN_KEY        minisign secret key file (its password, if any, in
#                        the file MIMG_SIGN_PASSWORD_FILE names)
#   MIMG_PREVIOUS        the manifest of the image now in production
#   MIMG_CACHE           a cache URL to push to (s3://BUCKET/PREFIX?endpoint=URL,
#                        file:///DIR), with the key MIMG_CACHE_KEY names
#                        (`mimg cache keygen`); S3 credentials as for any S3
#                        tool (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
#   MIMG_SUBSTITUTERS, MIMG_TRUSTED_KEYS   caches the build takes steps from
# Exit status: that of the first step that failed; 0 when all passed.
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 RECIPE OVERLAY" >&2
	exit 2
fi
recipe=$1
overlay=$2
mimg=${MIMG:-mimg}
out=${MIMG_OUT:-images}
read -r -a flags <<<"${MIMG_BUILD_FLAGS---locked}"
read -r -a test_flags <<<"${MIMG_TEST_FLAGS:-}"
name=$(basename "$recipe" .toml)
image=$out/$name.qcow2

step() { printf '\n== %s\n' "$*"; }

step "build $recipe"
sign=()
[ -n "${MIMG_SIGN_KEY:-}" ] && sign=(--sign "$MIMG_SIGN_KEY")
"$mimg" build "$recipe" --out "$out" "${flags[@]}" "${sign[@]}"

step "test $recipe with $overlay"
# The checks' JSON report stays beside the image: $out/NAME.test.json.
"$mimg" test "$recipe" --overlay "$overlay" --out "$out" --report "$out/$name.test.json" "${test_flags[@]}"

step "provenance of $image"
for f in "$out/$name.manifest.json" "$out/$name.cdx.json" "$out/$name.intoto.json"; do
	[ -s "$f" ] || { echo "missing: $f" >&2; exit 1; }
	echo "$f"
done
if [ -n "${MIMG_SIGN_KEY:-}" ]; then
	"$mimg" verify "$image" --pubkey "$MIMG_SIGN_KEY.pub"
fi

if [ -n "${MIMG_PREVIOUS:-}" ]; then
	step "changes since $MIMG_PREVIOUS"
	# diff exits 1 when the images differ: that is news, not a failure.
	rc=0
	"$mimg" diff "$MIMG_PREVIOUS" "$out/$name.manifest.json" || rc=$?
	[ "$rc" -le 1 ] || exit "$rc"
	if [ "$rc" -eq 0 ]; then echo "no change"; fi
fi

if [ -n "${MIMG_CACHE:-}" ]; then
	step "push to $MIMG_CACHE"
	"$mimg" cache push "$MIMG_CACHE" "$recipe" --key "${MIMG_CACHE_KEY:?MIMG_CACHE needs MIMG_CACHE_KEY, the cache signing key}"
fi
step "done: $image"
