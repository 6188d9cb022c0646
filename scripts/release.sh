#!/bin/sh
# Makes a minisd release from a git tag (or any commit): the source tarball
# dist/minisd-VERSION.tar.gz (git archive), the release rockspec
# dist/minisd-VERSION-1.rockspec whose source is that tarball, and the source rock
# dist/minisd-VERSION-1.src.rock (luarocks pack), which installs offline:
#   luarocks install ./dist/minisd-VERSION-1.src.rock
# Usage: sh scripts/release.sh [REF] [--url-base URL] [--out DIR]
#   REF        the tag or commit to release (default: vVERSION, VERSION being
#              minisd._VERSION in lua/minisd/init.lua)
#   --url-base where the tarball will be published (the rockspec's source.url is
#              URL/minisd-VERSION.tar.gz); default: file:// of the output folder
#   --out      output folder (default: dist)
set -eu
cd "$(dirname "$0")/.."
ref= url_base= out=dist
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --url-base) url_base=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -*) echo "release.sh: unknown option $1" >&2; exit 2 ;;
    *) ref=$1; shift ;;
    esac
done
version=$(sed -n 's/^M._VERSION = "\(.*\)"$/\1/p' lua/minisd/init.lua)
[ -n "$version" ] || { echo "release.sh: no M._VERSION in lua/minisd/init.lua" >&2; exit 1; }
ref=${ref:-v$version}
git rev-parse --verify -q "$ref^{commit}" >/dev/null ||
    { echo "release.sh: no tag or commit '$ref' (tag the release: git tag v$version)" >&2; exit 1; }
# the version in the released tree, not in the working tree
tree_version=$(git show "$ref:lua/minisd/init.lua" | sed -n 's/^M._VERSION = "\(.*\)"$/\1/p')
[ "$tree_version" = "$version" ] ||
    { echo "release.sh: $ref holds version $tree_version, the working tree $version" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
name=minisd-$version
url_base=${url_base:-file://$out}
git archive --format=tar.gz --prefix="$name/" -o "$out/$name.tar.gz.tmp" "$ref"
mv "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
# the release rockspec: the scm one with the version and the tarball as its source
git show "$ref:rockspec/minisd-scm-1.rockspec" | awk -v v="$version-1" -v url="$url_base/$name.tar.gz" \
    -v dir="$name" '
    /^version = / { print "version = \"" v "\""; next }
    /^source = \{/ { print "source = {"; print "  url = \"" url "\","; print "  dir = \"" dir "\",";
                     skip = 1; next }
    skip && /^\}/ { print "}"; skip = 0; next }
    skip { next }
    { print }' >"$out/$name-1.rockspec.tmp"
mv "$out/$name-1.rockspec.tmp" "$out/$name-1.rockspec"
(cd "$out" && luarocks pack "$name-1.rockspec" >/dev/null)
echo "release $version from $ref:"
ls -l "$out/$name.tar.gz" "$out/$name-1.rockspec" "$out/$name-1.src.rock" | awk '{print "  " $5 "\t" $9}'
