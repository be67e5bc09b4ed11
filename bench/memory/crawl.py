#!/usr/bin/env python3
"""Fetch N message permalinks of a list, newest first, as a crawler would (stdlib only).

    crawl.py [--base URL] [--list ADDRESS] [--skip K] N
"""
import argparse
import json
import urllib.error
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("n", type=int)
ap.add_argument("--base", default="http://127.0.0.1:18081")
ap.add_argument("--list", default="twisted@lists.example.org")
ap.add_argument("--skip", type=int, default=0)
a = ap.parse_args()
urls, page = [], 1
while len(urls) < a.skip + a.n:
    d = json.load(urllib.request.urlopen(f"{a.base}/api/v1/lists/{a.list}/messages?page={page}"))
    if not d["messages"]:
        break
    urls += [m["url"] for m in d["messages"]]
    page += 1
ok = err = 0
for u in urls[a.skip : a.skip + a.n]:
    try:
        urllib.request.urlopen(a.base + u).read()
        ok += 1
    except urllib.error.HTTPError:
        err += 1
print(f"crawled {ok} permalinks, {err} errors")
