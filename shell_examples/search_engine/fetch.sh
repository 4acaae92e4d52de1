#!/usr/bin/env bash
# fetch: the workload is a URL. Gets the page, queues it for index (workload: the URL, a
# newline, the HTML) and sends every link to the same site back to insert.
set -euo pipefail
IFS= read -r url || true
case "$url" in
    file://*) page="$(cat -- "${url#file://}")" ;;
    http://* | https://*) page="$(curl -fsSL -- "$url")" ;;
    *) echo "cannot fetch $url" >&2; exit 1 ;;
esac
printf '%s\n%s' "$url" "$page" | gearman -b -f index

# Links relative to this page, to more pages (.html); other sites are not crawled.
base="${url%/*}"
links="$(grep -o 'href="[^"#:]*\.html"' <<< "$page" | sed 's/^href="//; s/"$//' \
         | sed "s|^|$base/|" | sort -u || true)"
if [[ -n "$links" ]]; then
    gearman -b -N -f insert <<< "$links"     # one background insert job per line
fi
echo "fetched $url"
