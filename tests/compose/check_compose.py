#!/usr/bin/python3
"""Checks docker-compose.yml and deploy/ against the code they deploy.

No Docker engine runs where docpipe is tested, so the compose file cannot be
started here.  What can go stale in it is checked against the real program
instead:

  - every `docpipe <command>` a service runs is a command `docpipe help`
    lists, and `docpipe <command> --help` succeeds;
  - every stage a service runs is one `docpipe help` lists, and every
    pipeline stage has a service (and is scraped by Prometheus);
  - every DOCPIPE_* variable is a setting `docpipe config-doc` documents
    (DOCPIPE_KAFKA_*, DOCPIPE_CONSUMER_*, DOCPIPE_PRODUCER_* pass through to
    librdkafka and are allowed), and docpipe accepts each service's values
    (it loads them before `config-doc` runs);
  - every docpipe-embedserver flag is one its --help lists;
  - every path a healthcheck asks a stage for (port 9464) is served: a real
    `docpipe run --http` demo stage answers it with something other than 404;
  - every docpipe_* metric the Grafana dashboard and the Prometheus alert
    rules query is in that stage's /metrics.

Needs Kafka and PostgreSQL (scripts/test-env.sh) for the demo stage, which
runs under a topic prefix of its own and creates no topics.

    /usr/bin/python3 tests/compose/check_compose.py   (DOCPIPE_BIN, DOCPIPE_EMBEDSERVER_BIN,
                                                       DOCPIPE_SOURCE_DIR from ctest)
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

SRC = os.environ.get("DOCPIPE_SOURCE_DIR",
                     os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("DOCPIPE_BIN", "docpipe")
EMBEDSERVER = os.environ.get("DOCPIPE_EMBEDSERVER_BIN", "docpipe-embedserver")
STAGE_PORT = 9464
PASSTHROUGH = ("DOCPIPE_KAFKA_", "DOCPIPE_CONSUMER_", "DOCPIPE_PRODUCER_")

problems = []


def problem(msg):
    problems.append(msg)
    print("FAIL: " + msg)


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)


def help_sections():
    """Commands and stages, as `docpipe help` lists them."""
    out = run([BIN, "help"]).stdout
    sections, current = {}, None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            current = line.rstrip(":").split(" ")[0]
            continue
        m = re.match(r"^  ([a-z][a-z-]*)(\s|$)", line)
        if m and current:
            sections.setdefault(current, set()).add(m.group(1))
    return sections.get("Commands", set()), sections.get("Stages", set())


def settings():
    """The DOCPIPE_* variables of the settings table (docpipe config-doc)."""
    out = run([BIN, "config-doc"]).stdout
    names = set(re.findall(r"`(DOCPIPE_[A-Z0-9_]+)`", out))
    names.add("DOCPIPE_CONFIG")
    return names


def command_words(cmd):
    """The argument lists a service's command runs: a list as it is, and
    each `docpipe ...` inside an `sh -c` string."""
    if cmd is None:
        return []
    args = shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]
    if len(args) >= 3 and args[0] in ("sh", "bash", "/bin/sh") and args[1] == "-c":
        lists = []
        for part in re.split(r"&&|\|\||;|\|", args[2]):
            words = shlex.split(part)
            if words:
                lists.append(words)
        return lists
    return [args]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape_demo_stage(paths):
    """Runs a demo stage with --http; returns ({path: status}, metric names)."""
    port = free_port()
    env = dict(os.environ)
    env["DOCPIPE_TOPIC_PREFIX"] = "compose%d_%d." % (os.getpid(), int(time.time()) % 100000)
    env.setdefault("DOCPIPE_SCHEMA_DIR", os.path.join(SRC, "schemas"))
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([BIN, "run", "--http", "127.0.0.1:%d" % port, "demo"],
                            env=env, stdout=log, stderr=log)

    def log_tail():
        log.seek(0)
        return "".join(log.readlines()[-5:])
    try:
        base = "http://127.0.0.1:%d" % port
        text = None
        for _ in range(100):
            try:
                status, text = http_get(base + "/metrics")
                if status == 200 and "docpipe_records_total{" in text:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None:
                raise SystemExit("docpipe run --http demo exited %d (Kafka and "
                                 "PostgreSQL up? scripts/test-env.sh up):\n%s"
                                 % (proc.returncode, log_tail()))
            time.sleep(0.2)
        else:
            raise SystemExit("docpipe run --http demo served no /metrics:\n" + log_tail())
        statuses = {p: http_get(base + p)[0] for p in paths}
    finally:
        proc.terminate()
        if proc.wait(timeout=30) != 0:
            problem("docpipe run --http demo exited %d when stopped:\n%s"
                    % (proc.returncode, log_tail()))
        log.close()
    names = set()
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) ", line) or re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
        if m:
            names.add(m.group(1))
    return statuses, names


def walk_strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk_strings(v)
    elif isinstance(node, str):
        yield node


def main():
    with open(os.path.join(SRC, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    commands, stages = help_sections()
    if not commands or not stages:
        raise SystemExit("docpipe help listed no commands or stages")
    known = settings()
    embed_help = run([EMBEDSERVER, "--help"]).stdout
    embed_flags = set(re.findall(r"^\s+(--[a-z][a-z-]*)", embed_help, re.M))

    stage_services = {}
    health_paths = set()
    for name, svc in services.items():
        # Settings: every DOCPIPE_* in the environment (list or map form).
        env = svc.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for key in keys:
            if key.startswith("DOCPIPE_") and key not in known and \
                    not key.startswith(PASSTHROUGH):
                problem("%s: %s is not a docpipe setting (docpipe config-doc)" % (name, key))
        if isinstance(env, dict) and any(k.startswith("DOCPIPE_") for k in env):
            clean = {k: v for k, v in os.environ.items() if not k.startswith("DOCPIPE_")}
            clean.update({k: str(v) for k, v in env.items() if k.startswith("DOCPIPE_")})
            r = run([BIN, "config-doc"], env=clean)
            if r.returncode != 0:
                problem("%s: docpipe refuses its settings: %s" % (name, r.stderr.strip()))
        # Commands.
        for words in command_words(svc.get("command")):
            if words[0] == "docpipe":
                if len(words) < 2 or words[1] not in commands:
                    problem("%s: '%s' is not a docpipe command" % (name, " ".join(words)))
                    continue
                if run([BIN, words[1], "--help"]).returncode != 0:
                    problem("%s: docpipe %s --help failed" % (name, words[1]))
                if words[1] == "run":
                    rest = words[2:]
                    if rest[:1] == ["--http"]:
                        if len(rest) < 2 or not rest[1].endswith(":%d" % STAGE_PORT):
                            problem("%s: --http should listen on port %d" % (name, STAGE_PORT))
                        rest = rest[2:]
                    for st in rest:
                        if st not in stages and st != "all":
                            problem("%s: '%s' is not a stage" % (name, st))
                        else:
                            stage_services[st] = name
            elif words[0] == "docpipe-embedserver":
                for w in words[1:]:
                    if w.startswith("--") and w not in embed_flags:
                        problem("%s: docpipe-embedserver has no flag %s" % (name, w))
        # Health paths asked of a stage's listener.
        test = (svc.get("healthcheck") or {}).get("test") or []
        text = " ".join(test) if isinstance(test, list) else str(test)
        for m in re.finditer(r"https?://[^/\s:]+:(\d+)(/[^\s\"']*)", text):
            if int(m.group(1)) == STAGE_PORT:
                health_paths.add(m.group(2))
                if svc.get("restart") != "unless-stopped":
                    problem("%s: a stage should restart unless stopped" % name)

    pipeline = stages - {"demo"}
    for st in sorted(pipeline - set(stage_services)):
        problem("stage %s has no service" % st)
    for st, name in stage_services.items():
        dep = (services[name].get("depends_on") or {}).get("init") or {}
        if dep.get("condition") != "service_completed_successfully":
            problem("%s: should wait for init to complete successfully" % name)
        if not (services[name].get("healthcheck") or {}).get("test"):
            problem("%s: no healthcheck" % name)
    if not health_paths:
        problem("no healthcheck asks a stage on port %d" % STAGE_PORT)

    # Prometheus: every stage service found by DNS, on the stage port.
    with open(os.path.join(SRC, "deploy/prometheus/prometheus.yml")) as f:
        prom = yaml.safe_load(f)
    dns_names, ports = set(), set()
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []) or []:
            dns_names.update(sd.get("names", []))
            ports.add(sd.get("port"))
    for st, name in stage_services.items():
        if name not in dns_names:
            problem("prometheus.yml: service %s is not scraped (dns_sd_configs)" % name)
    for n in dns_names - set(services):
        problem("prometheus.yml: %s is not a compose service" % n)
    if ports != {STAGE_PORT}:
        problem("prometheus.yml: dns_sd_configs port should be %d, is %s" % (STAGE_PORT, ports))

    # Queries: the dashboard's and the alert rules'.
    queries = []
    with open(os.path.join(SRC, "deploy/grafana/dashboards/docpipe.json")) as f:
        dash = json.load(f)
    for panel in dash.get("panels", []):
        for t in panel.get("targets", []):
            queries.append(("dashboard panel '%s'" % panel.get("title"), t.get("expr", "")))
    with open(os.path.join(SRC, "deploy/prometheus/alerts.yml")) as f:
        alerts = yaml.safe_load(f)
    for group in alerts.get("groups", []):
        for rule in group.get("rules", []):
            queries.append(("alert %s" % rule.get("alert"), rule.get("expr", "")))
    if not queries:
        problem("no dashboard or alert queries found")

    statuses, metrics = scrape_demo_stage(sorted(health_paths))
    for path, status in statuses.items():
        if status == 404:
            problem("healthcheck path %s is not served by docpipe run --http" % path)
    for where, expr in queries:
        for name in set(re.findall(r"\bdocpipe_[a-z0-9_]+", expr)):
            if name not in metrics:
                problem("%s queries %s, which docpipe does not export" % (where, name))

    print("%d services, %d stage services, %d queries, health paths %s: %s" % (
        len(services), len(stage_services), len(queries), sorted(health_paths),
        "ok" if not problems else "%d problem(s)" % len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
