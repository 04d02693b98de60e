#!/usr/bin/env python3
"""How much heavy decoding delays other requests: /healthz latency while large documents
are translated (decode + write, nothing stored), next to the time the same decode takes
in the CLI (`validate`, no HTTP) in the same run. Traffic stays on 127.0.0.1.

Usage: bench/decode-pressure.py [BIN] [events] [concurrent] [seconds]
  BIN defaults to target/debug/ects-gateway (ECTS_GATEWAY_BIN overrides).
"""
import json, os, statistics, subprocess, sys, tempfile, threading, time, urllib.request

bin_ = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ECTS_GATEWAY_BIN", "target/debug/ects-gateway")
events = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
concurrent = int(sys.argv[3]) if len(sys.argv) > 3 else 4
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 15
port = 18097
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
work = tempfile.mkdtemp()
batch = [{"device_id": "860000000000001", "seq": i, "kind": "position",
          "time": "2026-03-14T10:%02d:%02dZ" % (i // 60 % 60, i % 60),
          "position": {"lat": 13.9, "lon": -90.5, "fix": "gps"}, "battery_pct": 80}
         for i in range(events)]
body = json.dumps({"events": batch}).encode()
path = os.path.join(work, "batch.json")
open(path, "wb").write(body)

def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t

cli = min(timed(lambda: subprocess.run([bin_, "validate", "--format", "ects-json", path,
                                        "--mappings", os.path.join(root, "mappings")],
                                       check=True, capture_output=True)) for _ in range(3))
server = subprocess.Popen([bin_, "serve", "--listen", f"127.0.0.1:{port}", "--database-url",
                           f"sqlite://{work}/ects.db", "--mappings", os.path.join(root, "mappings"),
                           "--log", "warn", "--max-body-bytes", str(64 << 20)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"
try:
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read(); break
        except Exception:
            time.sleep(0.1)
    def health():
        return timed(lambda: urllib.request.urlopen(base + "/healthz", timeout=60).read())
    def translate():
        req = urllib.request.Request(base + "/v1/translate?from=ects-json&to=ects-json", data=body,
                                     headers={"content-type": "application/json"})
        return timed(lambda: urllib.request.urlopen(req, timeout=120).read())
    idle = [health() for _ in range(20)]
    alone = min(translate() for _ in range(2))
    stop = time.monotonic() + seconds
    done = []
    def load():
        while time.monotonic() < stop:
            done.append(translate())
    threads = [threading.Thread(target=load) for _ in range(concurrent)]
    for t in threads: t.start()
    time.sleep(0.5)
    busy = []
    while time.monotonic() < stop:
        busy.append(health()); time.sleep(0.05)
    for t in threads: t.join()
    ms = lambda x: f"{x * 1000:.1f} ms"
    print(f"binary {bin_}; {events} events, {len(body)} bytes; {concurrent} concurrent translations for {seconds:.0f} s")
    print(f"decode in the CLI (validate, best of 3, with start-up): {ms(cli)}")
    print(f"one translation over HTTP, alone (best of 2): {ms(alone)} ({alone / cli:.2f}x the CLI)")
    print(f"translations done under load: {len(done)}, median {ms(statistics.median(done))}")
    print(f"/healthz idle: median {ms(statistics.median(idle))}, max {ms(max(idle))}")
    print(f"/healthz under load ({len(busy)} samples): median {ms(statistics.median(busy))}, "
          f"p90 {ms(sorted(busy)[int(len(busy) * 0.9)])}, max {ms(max(busy))}")
finally:
    server.terminate(); server.wait()
