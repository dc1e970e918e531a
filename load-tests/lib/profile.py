"""CPU and allocation profiles of the Worker isolate through wrangler dev's inspector
(scripts/profile.sh).

  profile.py capture PORT SECONDS OUTDIR   sample for SECONDS; write cpu.cpuprofile,
                                           heap.heapprofile and the isolate's index.js
  profile.py summary OUTDIR                top functions (self and inclusive) and
                                           allocation sites, as shares of the samples

Anonymous frames of the bundle are named by the wasm-bindgen import they sit in
(`__wbg_...*`), read from the index.js the isolate ran. Loopback only.
"""
import asyncio
import collections
import json
import re
import sys
import urllib.request

import websockets


async def capture(port, secs, out):
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10))
    if not targets:
        sys.exit("profile: the inspector lists no isolate")
    # wrangler's inspector proxy refuses a socket without an allowed Origin.
    async with websockets.connect(targets[0]["webSocketDebuggerUrl"], max_size=1 << 30,
                                  origin="http://localhost", ping_interval=None,
                                  open_timeout=30) as ws:
        n = 0
        scripts = {}

        async def call(method, params=None):
            nonlocal n
            n += 1
            me = n
            await ws.send(json.dumps({"id": me, "method": method, "params": params or {}}))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if m.get("method") == "Debugger.scriptParsed":
                    scripts[m["params"]["scriptId"]] = m["params"]["url"]
                if m.get("id") == me:
                    if "error" in m:
                        sys.exit(f"profile: {method}: {m['error']}")
                    return m.get("result")

        # The bundle's source, to name its anonymous frames; the debugger is off again before
        # sampling (it would slow wasm down further).
        await call("Debugger.enable")
        for sid, url in scripts.items():
            if url.endswith("/index.js"):
                src = await call("Debugger.getScriptSource", {"scriptId": sid})
                with open(f"{out}/index.js", "w") as f:
                    f.write(src["scriptSource"])
        await call("Debugger.disable")
        await call("Profiler.enable")
        await call("Profiler.setSamplingInterval", {"interval": 200})
        await call("HeapProfiler.enable")
        await call("HeapProfiler.startSampling", {
            "samplingInterval": 4096,
            "includeObjectsCollectedByMajorGC": True,
            "includeObjectsCollectedByMinorGC": True,
        })
        await call("Profiler.start")
        await asyncio.sleep(secs)
        cpu = await call("Profiler.stop")
        heap = await call("HeapProfiler.stopSampling")
        with open(f"{out}/cpu.cpuprofile", "w") as f:
            json.dump(cpu["profile"], f)
        with open(f"{out}/heap.heapprofile", "w") as f:
            json.dump(heap["profile"], f)


def namer(out):
    try:
        src = open(f"{out}/index.js").read().split("\n")
    except OSError:
        src = []

    def name(cf):
        f = cf["functionName"]
        if not f:
            u, ln = cf["url"].split("/")[-1], cf["lineNumber"]
            f = f"(anon {u}:{ln})"
            if u == "index.js" and 0 <= ln < len(src):
                m = re.findall(r"(__wbg\w+|__wbindgen\w+)", src[ln])
                if m:
                    f = m[-1] + "*"
        return re.sub(r"::h[0-9a-f]{16}$", "", f)[:120]
    return name


def summary(out, top=40):
    name = namer(out)
    p = json.load(open(f"{out}/cpu.cpuprofile"))
    nodes = {n["id"]: n for n in p["nodes"]}
    parent = {c: n["id"] for n in p["nodes"] for c in n.get("children", [])}
    samples = collections.Counter(p["samples"])
    total = sum(samples.values()) or 1
    own, incl = collections.Counter(), collections.Counter()
    for nid, c in samples.items():
        own[name(nodes[nid]["callFrame"])] += c
        seen, x = set(), nid
        while x is not None:
            nm = name(nodes[x]["callFrame"])
            if nm not in seen:
                incl[nm] += c
                seen.add(nm)
            x = parent.get(x)
    lines = [f"CPU: {total} samples (shares include idle)", "", "self:"]
    lines += [f"{100 * v / total:6.2f}% {k}" for k, v in own.most_common(top)]
    lines += ["", "inclusive, the edge's own code (edge_gateway, observability, shard_policies):"]
    lines += [f"{100 * v / total:6.2f}% {k}" for k, v in incl.most_common()
              if re.match(r"<?(edge_gateway|observability|shard_policies)", k)][:top]
    h = json.load(open(f"{out}/heap.heapprofile"))
    sites, size = collections.Counter(), 0

    def walk(node):
        nonlocal size
        s = node["selfSize"]
        if s:
            size += s
            sites[name(node["callFrame"])] += s
        for c in node.get("children", []):
            walk(c)
    walk(h["head"])
    lines += ["", f"allocations: {size / 1e6:.1f} MB sampled (collected objects included), by site:"]
    lines += [f"{100 * v / max(size, 1):6.2f}% {k}" for k, v in sites.most_common(top)]
    text = "\n".join(lines) + "\n"
    with open(f"{out}/summary.txt", "w") as f:
        f.write(text)
    print(text, end="")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "capture":
        asyncio.run(capture(int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]))
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        summary(sys.argv[2])
    else:
        sys.exit(__doc__)
