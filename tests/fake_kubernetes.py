"""A fake Kubernetes API server and kubelet, for tests that run the real ``KubernetesPodOperator``.

``FakeKubernetes`` serves the part of the core/v1 API that the cncf provider's synchronous pod path
calls (pods, pod logs, events, namespaces, secrets, configmaps, ``/version``) over real HTTP on
127.0.0.1, and plays the kubelet of one node: each pod's containers run as local processes of this
machine (the image is recorded, never pulled), their output is the pod log, their exit code the
container status. Objects, status, errors and log streams are shaped as Kubernetes shapes them, so
the ``kubernetes`` client deserialises them into ``V1Pod``, ``CoreV1EventList`` and so on.

Typical use::

    def test_pod(fake_kubernetes):          # the fixture below: AIRFLOW_CONN_KUBERNETES_DEFAULT is set
        fake_kubernetes.add_secret("flywheel", "creds", {"token": "s3cret"})
        KubernetesPodOperator(task_id="t", namespace="flywheel", ...).execute(context)
        assert fake_kubernetes.created_pods[0]["spec"]["containers"][0]["name"] == "base"

A container's file system is a directory of its own (its working directory stands for ``/``): the
termination message file is read from ``<cwd>/dev/termination-log`` (``terminationMessagePath``
under that root). Volumes are not mounted. See ``NOT_FAITHFUL`` for the rest of what differs.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

log = logging.getLogger(__name__)

NODE_NAME = "fake-node"
NODE_IP = "127.0.0.1"
KUBERNETES_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")

NOT_FAITHFUL = """\
- One node, no scheduler logic: every pod is scheduled at once (no resources, taints, affinity).
  Evictions and preemptions happen only when a test calls ``evict_pod`` / ``preempt_pod``.
- No watch (?watch=true is refused with 400), no exec/attach/port-forward (so no do_xcom_push), no
  server-side apply, no RBAC (one bearer token), no events.k8s.io; strategic merge patch only merges
  lists of objects by ``name``.
- Volumes and volumeMounts are recorded but not mounted (emptyDir, configMap and secret volumes do not
  exist in the container); the service-account token volume is added to the spec but holds nothing.
  A container's ``/`` is its own directory only for workingDir and the termination message file:
  absolute paths in its command are this machine's.
- Containers are never restarted: every restartPolicy behaves as Never. Probes, lifecycle hooks,
  securityContext, hostAliases, ports and images are not applied. Of ``resources`` only a memory limit
  is, and only to the container's first process: its RSS, polled, over the limit SIGKILLs the container
  (reason ``OOMKilled``, exit code 137); a short peak between polls goes unnoticed.
- The container's environment is the host variables the test passed, HOSTNAME and the pod's env; no
  service-link variables (KUBERNETES_SERVICE_HOST...); resourceFieldRef env is a config error.
- stdout and stderr are merged into one stream; long lines are not split into 16 KiB parts.
- Status is written at once: the API never lags behind the kubelet as on a real cluster, and a finished
  pod is removed at once on DELETE (no grace period to wait out).
"""


# --------------------------------------------------------------------------------------------------
# Errors, time and small helpers
# --------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An API failure, sent to the client as a ``Status`` object with the HTTP code Kubernetes uses."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict:
        """The ``metav1.Status`` body for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


_KINDS = {"pods": "Pod", "secrets": "Secret", "configmaps": "ConfigMap", "events": "Event"}


def _not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{plural} "{name}" not found', {"name": name, "kind": plural})


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _invalid(kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """A 422 like the API server's field validation: ``causes`` are (field, reason, message)."""
    texts = [f"{f}: {m}" for f, _, m in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
    }
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime) -> str:
    """RFC 3339 at second precision, as ``metav1.Time`` serialises."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ts_nano(ns: int) -> str:
    """Go's RFC3339Nano (trailing zeros trimmed), the kubelet's log timestamp format."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


def _parse_time(text: str) -> datetime:
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        raise _bad_request(f'parsing time "{text}" as "2006-01-02T15:04:05Z07:00": cannot parse')
    fraction = (match.group(2) or "")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone)


def _parse_bool(value: str, name: str) -> bool:
    """Go's ``strconv.ParseBool``, which the API server uses for query parameters."""
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False", ""):
        return False
    raise _bad_request(f'invalid value for {name}: strconv.ParseBool: parsing "{value}": invalid syntax')


def _parse_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _bad_request(
            f'invalid value for {name}: strconv.ParseInt: parsing "{value}": invalid syntax'
        ) from None


_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REFERENCE = re.compile(
    r"(?:(?P<domain>(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?)/)?"
    rf"(?P<path>{_NAME_COMPONENT}(?:/{_NAME_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)


def _qualified_name_error(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
            "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc'), "
            "and must be no more than 63 characters"
        )
    return None


def _validate_metadata(meta: dict, causes: list[tuple[str, str, str]]) -> None:
    for key, value in (meta.get("labels") or {}).items():
        if error := _qualified_name_error(key):
            causes.append(("metadata.labels", "FieldValueInvalid", f'Invalid value: "{key}": {error}'))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            causes.append(
                (
                    "metadata.labels",
                    "FieldValueInvalid",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                    "alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character, and must be no more than 63 characters",
                )
            )
    for key in meta.get("annotations") or {}:
        if error := _qualified_name_error(key.lower()):
            causes.append(("metadata.annotations", "FieldValueInvalid", f'Invalid value: "{key}": {error}'))


def _normalize_image(image: str) -> str:
    """The fully qualified reference containerd reports, e.g. ``docker.io/library/python:3.11``."""
    match = _IMAGE_REFERENCE.fullmatch(image)
    if not match:
        return image
    domain, path = match.group("domain"), match.group("path")
    if domain and ("." not in domain and ":" not in domain and domain != "localhost"):
        path, domain = f"{domain}/{path}", None
    if not domain:
        domain = "docker.io"
        if "/" not in path:
            path = f"library/{path}"
    tag = match.group("tag") or ("" if match.group("digest") else "latest")
    ref = f"{domain}/{path}"
    if tag:
        ref += f":{tag}"
    if match.group("digest"):
        ref += f"@{match.group('digest')}"
    return ref


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes, others stay."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


def _split_selector(text: str) -> list[str]:
    """Split a selector at commas that are not inside ``( )`` (set-based requirements)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A label selector (equality- and set-based, ``!key``, ``key``) as a predicate on a label map."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for part in _split_selector(text):
        if match := re.fullmatch(r"!\s*(\S+)", part):
            key = match.group(1)
            tests.append(lambda labels, k=key: k not in labels)
        elif match := re.fullmatch(r"(\S+?)\s+(in|notin)\s*\((.*)\)", part):
            key, op = match.group(1), match.group(2)
            values = {v.strip() for v in match.group(3).split(",") if v.strip()}
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif match := re.fullmatch(r"([^=!<>\s]+)\s*(==|=|!=|<|>)\s*(\S*)", part):
            key, op, value = match.groups()
            if op in ("=", "=="):
                tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
            elif op == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                number = _parse_int(value, "labelSelector")
                sign = 1 if op == ">" else -1
                tests.append(
                    lambda labels, k=key, n=number, s=sign: (
                        labels.get(k, "").lstrip("-").isdigit() and s * (int(labels[k]) - n) > 0
                    )
                )
        elif re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9_./]*", part):
            tests.append(lambda labels, k=part: k in labels)
        else:
            raise _bad_request(f"unable to parse requirement: found '{part}', expected: identifier\"")
        key_error = _qualified_name_error(re.split(r"[\s=!<>(]", part.lstrip("! "))[0])
        if key_error:
            raise _bad_request(f"unable to parse requirement: {key_error}")
    return lambda labels: all(t(labels) for t in tests)


def _get_path(obj: dict, dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_POD_FIELDS = {
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
}
_EVENT_FIELDS = {
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
}
_FIELDS = {
    "pods": _POD_FIELDS,
    "events": _EVENT_FIELDS,
    "secrets": {"metadata.name", "metadata.namespace", "type"},
    "configmaps": {"metadata.name", "metadata.namespace"},
    "namespaces": {"metadata.name", "status.phase"},
}


def parse_field_selector(text: str, plural: str) -> Callable[[dict], bool]:
    """A field selector (``a=b``, ``a==b``, ``a!=b``) over the fields the API server indexes."""
    tests: list[Callable[[dict], bool]] = []
    for part in _split_selector(text):
        match = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", part)
        if not match:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        name, op, value = match.groups()
        if name not in _FIELDS[plural]:
            raise _bad_request(f'field label not supported: "{name}"')
        path = "source.component" if name == "source" else name
        if op == "!=":
            tests.append(lambda obj, p=path, v=value: _get_path(obj, p) != v)
        else:
            tests.append(lambda obj, p=path, v=value: _get_path(obj, p) == v)
    return lambda obj: all(t(obj) for t in tests)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch, simplified: lists of objects with a ``name`` merge by name, others replace."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        current = result.get(key)
        if value is None:
            result.pop(key, None)
        elif (
            isinstance(value, list)
            and isinstance(current, list)
            and all(isinstance(i, dict) and "name" in i for i in [*value, *current])
        ):
            merged = {item["name"]: item for item in current}
            for item in value:
                if item.get("$patch") == "delete":
                    merged.pop(item["name"], None)
                else:
                    merged[item["name"]] = _strategic_merge_patch(merged.get(item["name"]), item)
            result[key] = list(merged.values())
        else:
            result[key] = _strategic_merge_patch(current, value)
    return result


def _json_pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f'JSON pointer "{path}" must start with "/"')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Any, operations: list) -> Any:
    """RFC 6902 JSON patch."""
    doc = copy.deepcopy(doc)

    def parent_of(parts: list[str]) -> tuple[Any, str]:
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(parts: list[str]) -> Any:
        node = doc
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    for operation in operations:
        op, parts = operation.get("op"), _json_pointer(operation.get("path", ""))
        try:
            if op in ("add", "replace", "copy", "move"):
                if op == "copy":
                    value = copy.deepcopy(get(_json_pointer(operation["from"])))
                elif op == "move":
                    src_parent, src_key = parent_of(_json_pointer(operation["from"]))
                    value = src_parent.pop(int(src_key) if isinstance(src_parent, list) else src_key)
                else:
                    value = copy.deepcopy(operation["value"])
                parent, key = parent_of(parts)
                if isinstance(parent, list):
                    if key == "-":
                        parent.append(value)
                    elif op == "replace":
                        parent[int(key)] = value
                    else:
                        parent.insert(int(key), value)
                else:
                    if op == "replace" and key not in parent:
                        raise KeyError(key)
                    parent[key] = value
            elif op == "remove":
                parent, key = parent_of(parts)
                parent.pop(int(key) if isinstance(parent, list) else key)
            elif op == "test":
                if get(parts) != operation.get("value"):
                    raise ApiError(422, "Invalid", f"testing value {operation.get('path')} failed")
            else:
                raise ApiError(422, "Invalid", f"Unexpected kind: {op}")
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(
                422, "Invalid", f"the server rejected our request due to an error in our request: {operation}"
            ) from None
    return doc


# --------------------------------------------------------------------------------------------------
# Kubelet state
# --------------------------------------------------------------------------------------------------


class _ConfigError(Exception):
    """A container cannot be started because its configuration (a secret, a configmap) is missing."""


@dataclass
class _Container:
    """A container of a pod on the fake node: its spec, process, log and state."""

    spec: dict
    init: bool
    root: Path
    state: str = "waiting"  # waiting | running | terminated
    waiting_reason: str = "ContainerCreating"
    waiting_message: str | None = None
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = None
    container_id: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    lines: list[tuple[int, bytes]] = field(default_factory=list)
    next_start_attempt: float = 0.0
    memory_limit: int | None = None
    """``resources.limits.memory`` in bytes: the container is ``OOMKilled`` when its RSS goes over it."""
    oom_killed: bool = False

    @property
    def name(self) -> str:
        return self.spec["name"]

    def status(self) -> dict:
        """The ``V1ContainerStatus`` of this container."""
        image = self.spec.get("image", "")
        status: dict[str, Any] = {
            "name": self.name,
            "image": _normalize_image(image),
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "state": {},
            "lastState": {},
        }
        if self.container_id:
            digest = hashlib.sha256(image.encode()).hexdigest()
            status["imageID"] = f"{_normalize_image(image).split(':')[0].split('@')[0]}@sha256:{digest}"
            status["containerID"] = f"containerd://{self.container_id}"
        if self.state == "waiting":
            waiting = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            status["state"] = {"waiting": waiting}
        elif self.state == "running":
            status["state"] = {"running": {"startedAt": _ts(self.started_at or _now())}}
            status["ready"] = not self.init
            status["started"] = True
        else:
            terminated: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason}
            if self.message:
                terminated["message"] = self.message
            if self.started_at:
                terminated["startedAt"] = _ts(self.started_at)
            terminated["finishedAt"] = _ts(self.finished_at or _now())
            if self.container_id:
                terminated["containerID"] = f"containerd://{self.container_id}"
            status["state"] = {"terminated": terminated}
            status["ready"] = self.init and self.exit_code == 0
        return status


@dataclass
class _PodRuntime:
    """What the fake kubelet knows of one pod: its containers, timeline and pod-level failure."""

    namespace: str
    name: str
    uid: str
    init_containers: list[_Container]
    containers: list[_Container]
    created: float = field(default_factory=time.monotonic)
    scheduled: bool = False
    sandbox_ready: bool = False
    start_time: datetime | None = None
    started_monotonic: float | None = None
    pod_ip: str | None = None
    failure: tuple[str, str] | None = None
    eviction: tuple[str, int] | None = None
    """(message, grace period) of a node-pressure eviction the kubelet is to carry out."""
    active: bool = True
    conditions: dict[str, dict] = field(default_factory=dict)
    thread: threading.Thread | None = None

    def all_containers(self) -> list[_Container]:
        return [*self.init_containers, *self.containers]

    def container(self, name: str) -> _Container | None:
        return next((c for c in self.all_containers() if c.name == name), None)

    def phase(self) -> str:
        """The pod phase the kubelet computes (restartPolicy Never)."""
        if self.failure:
            return "Failed"
        if not self.sandbox_ready:
            return "Pending"
        for c in self.init_containers:
            if c.state != "terminated":
                return "Pending"
            if c.exit_code != 0:
                return "Failed"
        states = [c.state for c in self.containers]
        if "waiting" in states:
            return "Pending"
        if "running" in states:
            return "Running"
        return "Succeeded" if all(c.exit_code == 0 for c in self.containers) else "Failed"


@dataclass
class RecordedRequest:
    """One request the fake API server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class _Reply:
    code: int
    body: Any  # dict (JSON), bytes (text) or an iterator of bytes (chunked stream)
    content_type: str = "application/json"


# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


class FakeKubernetes:
    """A Kubernetes API server plus one kubelet that runs pod containers as local processes.

    :param host_env: variables of this machine passed into every container (the "image"
        environment, e.g. ``PATH`` and ``HOME``); the pod's ``env``/``envFrom`` come on top.
    :param namespaces: namespaces that exist besides the system ones (``default``, ``kube-system``...).
    :param token: bearer token the API server requires (``None``: no authentication).
    :param schedule_delay: seconds between creation and the pod being scheduled (PodScheduled).
    :param start_delay: seconds between scheduling and the sandbox being ready / containers starting.
    :param config_retry_interval: seconds between the kubelet's retries of a container whose secret or
        configmap is missing (``CreateContainerConfigError``).
    :param workdir: where container root directories go (default: a temporary directory, removed
        on close).
    """

    def __init__(
        self,
        host_env: Mapping[str, str] | None = None,
        *,
        namespaces: Iterable[str] = (),
        token: str | None = "fake-kubernetes-token",
        schedule_delay: float = 0.05,
        start_delay: float = 0.1,
        config_retry_interval: float = 0.5,
        workdir: Path | None = None,
    ) -> None:
        self.host_env = dict(host_env or {})
        self.token = token
        self.schedule_delay = schedule_delay
        self.start_delay = start_delay
        self.config_retry_interval = config_retry_interval
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fake-kubernetes-"))
        self.created_pods: list[dict] = []
        """Every pod body a client POSTed, as sent (before defaults), in order."""
        self.requests: list[RecordedRequest] = []
        """Every request received, in order."""
        self.errors: list[str] = []
        """Unexpected exceptions in the fake itself (a test can assert this stays empty)."""
        self._cond = threading.Condition(threading.RLock())
        self._objects: dict[str, dict[tuple[str, str], dict]] = {
            "namespaces": {},
            "pods": {},
            "secrets": {},
            "configmaps": {},
            "events": {},
        }
        self._runtimes: dict[tuple[str, str], _PodRuntime] = {}
        self._rv = itertools.count(1000)
        self._ips = itertools.count(2)
        self._closing = False
        self._server: _Server | None = None
        self._server_thread: threading.Thread | None = None
        for ns in (*SYSTEM_NAMESPACES, *namespaces):
            self.add_namespace(ns)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        """Start serving on 127.0.0.1 at a free port."""
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._server_thread.start()
        return self

    def close(self) -> None:
        """Stop the server, kill every container process and remove the container directories."""
        with self._cond:
            self._closing = True
            runtimes = list(self._runtimes.values())
            self._cond.notify_all()
        for rt in runtimes:
            for c in rt.all_containers():
                _kill_group(c.process, signal.SIGKILL)
                if c.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        c.process.wait(timeout=5)
        for rt in runtimes:
            if rt.thread is not None:
                rt.thread.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The API server's base URL, e.g. ``http://127.0.0.1:40123``."""
        assert self._server is not None, "FakeKubernetes is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- client configuration -------------------------------------------------------------------

    def kubeconfig(self, namespace: str = "default") -> dict:
        """A kubeconfig (as a dict) whose current context points at this server."""
        user: dict[str, str] = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}
            ],
            "current-context": "fake",
            "preferences": {},
        }

    def write_kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        """Write a kubeconfig file for this server (plain HTTP, bearer token) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.kubeconfig(namespace), sort_keys=False))
        return path

    def connection_env(self, conn_id: str, *, namespace: str | None = None) -> dict[str, str]:
        """``AIRFLOW_CONN_<ID>`` for a ``kubernetes`` connection whose ``kube_config_path`` is this server's.

        ``namespace`` becomes the connection's default namespace (the ``namespace`` extra).
        """
        path = self.write_kubeconfig(self.workdir / f"kubeconfig-{conn_id}.yaml")
        extra: dict[str, Any] = {"kube_config_path": str(path)}
        if namespace:
            extra["namespace"] = namespace
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({"conn_type": "kubernetes", "extra": extra})}

    # -- test-side setup and inspection -----------------------------------------------------------

    def add_namespace(self, name: str) -> None:
        """Create a namespace (pods can only be created in existing namespaces)."""
        with self._cond:
            if ("", name) not in self._objects["namespaces"]:
                self._objects["namespaces"][("", name)] = {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": self._new_meta(
                        {"name": name, "labels": {"kubernetes.io/metadata.name": name}}
                    ),
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }

    def add_secret(self, namespace: str, name: str, data: Mapping[str, str | bytes]) -> None:
        """Create (or replace) an Opaque secret; its namespace is created if missing."""
        self.add_namespace(namespace)
        encoded = {
            k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode() for k, v in data.items()
        }
        with self._cond:
            self._objects["secrets"][(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": self._new_meta({"name": name, "namespace": namespace}),
                "type": "Opaque",
                "data": encoded,
            }

    def add_config_map(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        """Create (or replace) a configmap; its namespace is created if missing."""
        self.add_namespace(namespace)
        with self._cond:
            self._objects["configmaps"][(namespace, name)] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self._new_meta({"name": name, "namespace": namespace}),
                "data": dict(data),
            }

    def get_pod(self, namespace: str, name: str) -> dict | None:
        """The pod as the API would return it now, or ``None`` if it does not exist (any more)."""
        with self._cond:
            pod = self._objects["pods"].get((namespace, name))
            return copy.deepcopy(pod) if pod else None

    def pods(self, namespace: str | None = None) -> list[dict]:
        """Every existing pod (of ``namespace`` if given)."""
        with self._cond:
            return [
                copy.deepcopy(p) for (ns, _), p in self._objects["pods"].items() if namespace in (None, ns)
            ]

    def events(self, namespace: str, involved_name: str | None = None) -> list[dict]:
        """Events of ``namespace`` (of one involved object if ``involved_name``), oldest first."""
        with self._cond:
            return [
                copy.deepcopy(e)
                for (ns, _), e in self._objects["events"].items()
                if ns == namespace and involved_name in (None, e["involvedObject"]["name"])
            ]

    def container_root(self, namespace: str, pod: str, container: str = "base") -> Path:
        """The directory that stands for the container's ``/`` (its working directory)."""
        return self.workdir / namespace / pod / container

    def evict_pod(
        self, namespace: str, name: str, *, resource: str = "memory", grace_period: int = 0
    ) -> None:
        """Evict a pod as the kubelet's eviction manager does when the node runs low on ``resource``.

        A ``Warning`` event ``Evicted``, then the containers are killed (``grace_period``, at least the
        kubelet's minimum of 2 s; 0 for a hard threshold) and the pod ends ``Failed`` with
        ``status.reason: Evicted``, the eviction message and a ``DisruptionTarget`` condition (reason
        ``TerminationByKubelet``). The pod object stays, as evicted pods do until garbage-collected.
        """
        with self._cond:
            self._get("pods", namespace, name)
            rt = self._runtimes.get((namespace, name))
            if rt is None or not rt.active:
                raise ValueError(f"pod {namespace}/{name} is not running on the node")
            container = rt.containers[0].name
            message = (
                f"The node was low on resource: {resource}. Threshold quantity: 100Mi, available: 51200Ki. "
                f"Container {container} was using 1524Mi, request is 0, "
                f"has larger consumption of {resource}. "
            )
            rt.eviction = (message, max(grace_period, 2))
            self._cond.notify_all()

    def preempt_pod(self, namespace: str, name: str, *, preemptor: str = "high-priority-job") -> None:
        """Preempt a pod as the scheduler does to make room for a higher-priority pod.

        The scheduler adds a ``DisruptionTarget`` condition (reason ``PreemptionByScheduler``) to the
        victim's status, records a ``Preempted`` event and deletes it with its grace period: the kubelet
        stops the containers and the pod is gone (reads answer 404); its events stay.
        """
        with self._cond:
            pod = self._get("pods", namespace, name)
            rt = self._runtimes.get((namespace, name))
            scheduler = pod["spec"].get("schedulerName", "default-scheduler")
            condition = _condition(
                "True",
                "PreemptionByScheduler",
                f"{scheduler}: preempting to accommodate a higher priority pod",
            )
            if rt is not None:
                rt.conditions["DisruptionTarget"] = condition
                self._sync_status(rt)
            self._event(
                pod,
                "Preempted",
                f"Preempted by pod {uuid.uuid5(uuid.NAMESPACE_DNS, preemptor)} on node {NODE_NAME}",
                component=scheduler,
            )
            self._delete_pod(namespace, name, {}, None)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` (evaluated under the fake's lock on every change) is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("condition not reached in time")
                self._cond.wait(min(remaining, 0.2))

    # -- object store -------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        return str(next(self._rv))

    def _new_meta(self, meta: dict) -> dict:
        meta = dict(meta)
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            creationTimestamp=_ts(_now()),
        )
        return meta

    def _require_namespace(self, namespace: str) -> None:
        if ("", namespace) not in self._objects["namespaces"]:
            raise _not_found("namespaces", namespace)

    def _get(self, plural: str, namespace: str, name: str) -> dict:
        obj = self._objects[plural].get((namespace, name))
        if obj is None:
            raise _not_found(plural, name)
        return obj

    def _list(self, plural: str, namespace: str | None, query: dict[str, list[str]]) -> dict:
        if _parse_bool(_q(query, "watch") or "false", "watch"):
            raise _bad_request("fake kubernetes does not implement watch")
        label_test = parse_label_selector(_q(query, "labelSelector") or "")
        field_test = parse_field_selector(_q(query, "fieldSelector") or "", plural)
        match = _q(query, "resourceVersionMatch")
        if match and not _q(query, "resourceVersion"):
            raise _bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        items = [
            obj
            for (ns, _), obj in self._objects[plural].items()
            if namespace in (None, ns) and label_test(obj["metadata"].get("labels") or {}) and field_test(obj)
        ]
        offset = int(base64.b64decode(_q(query, "continue")).decode()) if _q(query, "continue") else 0
        limit = _parse_int(_q(query, "limit") or "0", "limit")
        page = items[offset : offset + limit] if limit > 0 else items[offset:]
        meta: dict[str, Any] = {"resourceVersion": str(self._current_rv())}
        if limit > 0 and offset + limit < len(items):
            meta["continue"] = base64.b64encode(str(offset + limit).encode()).decode()
            meta["remainingItemCount"] = len(items) - offset - limit
        kind = "Namespace" if plural == "namespaces" else _KINDS[plural]
        out = []
        for obj in page:
            item = copy.deepcopy(obj)
            item.pop("kind", None)
            item.pop("apiVersion", None)
            out.append(item)
        return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": meta, "items": out}

    def _current_rv(self) -> int:
        # itertools.count has no peek: take one and use it (resource versions only need to grow).
        return int(self._next_rv())

    # -- events -----------------------------------------------------------------------------------

    def _event(
        self,
        pod: dict,
        reason: str,
        message: str,
        *,
        type_: str = "Normal",
        component: str = "kubelet",
        container: str | None = None,
        init: bool = False,
    ) -> None:
        """Record a pod event; a repeat of the same event bumps its count, as client-go's correlator does."""
        meta = pod["metadata"]
        field_path = (
            f"spec.{'initContainers' if init else 'containers'}{{{container}}}" if container else None
        )
        now = _ts(_now())
        for event in self._objects["events"].values():
            involved = event["involvedObject"]
            if (
                involved["uid"] == meta["uid"]
                and involved.get("fieldPath") == field_path
                and event["reason"] == reason
                and event["message"] == message
                and event["type"] == type_
            ):
                event["count"] += 1
                event["lastTimestamp"] = now
                event["metadata"]["resourceVersion"] = self._next_rv()
                return
        involved_object = {
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": "v1",
            "resourceVersion": meta["resourceVersion"],
        }
        if field_path:
            involved_object["fieldPath"] = field_path
        name = f"{meta['name']}.{secrets.token_hex(8)}"
        source = {"component": component}
        if component == "kubelet":
            source["host"] = NODE_NAME
        self._objects["events"][(meta["namespace"], name)] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": self._new_meta({"name": name, "namespace": meta["namespace"]}),
            "involvedObject": involved_object,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": component,
            "reportingInstance": NODE_NAME if component == "kubelet" else "",
        }

    # -- pods: API side -------------------------------------------------------------------------------

    def _create_pod(self, namespace: str, body: Any) -> dict:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request could not be decoded as a Pod")
        self.created_pods.append(copy.deepcopy(body))
        if body.get("kind") not in (None, "Pod") or body.get("apiVersion") not in (None, "v1"):
            raise _bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match")
        pod = copy.deepcopy(body)
        pod["apiVersion"], pod["kind"] = "v1", "Pod"
        meta = pod.setdefault("metadata", {}) or {}
        pod["metadata"] = meta
        if meta.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        self._require_namespace(namespace)
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            for _ in range(10):
                name = meta["generateName"] + "".join(secrets.choice(alphabet) for _ in range(5))
                if (namespace, name) not in self._objects["pods"]:
                    meta["name"] = name
                    break
        name = meta.get("name") or ""
        causes: list[tuple[str, str, str]] = []
        if not name:
            causes.append(
                ("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")
            )
        elif len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
            causes.append(
                (
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                    "case alphanumeric characters, '-' or '.', and must start and end with an "
                    "alphanumeric character",
                )
            )
        _validate_metadata(meta, causes)
        spec = pod.get("spec") or {}
        pod["spec"] = spec
        self._validate_pod_spec(spec, causes)
        if causes:
            raise _invalid("Pod", name, causes)
        if (namespace, name) in self._objects["pods"]:
            raise ApiError(
                409, "AlreadyExists", f'pods "{name}" already exists', {"name": name, "kind": "pods"}
            )
        for system_field in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "selfLink"):
            meta.pop(system_field, None)
        pod["metadata"] = self._new_meta(meta)
        pod = _omit_empty(pod)
        spec = pod["spec"]
        self._default_pod_spec(spec)
        pod["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
        self._objects["pods"][(namespace, name)] = pod
        self._start_kubelet(pod)
        return copy.deepcopy(pod)

    def _validate_pod_spec(self, spec: dict, causes: list[tuple[str, str, str]]) -> None:
        containers = spec.get("containers") or []
        if not containers:
            causes.append(("spec.containers", "FieldValueRequired", "Required value"))
        seen: set[str] = set()
        for group in ("initContainers", "containers"):
            for i, c in enumerate(spec.get(group) or []):
                where = f"spec.{group}[{i}]"
                cname = c.get("name") or ""
                if not cname:
                    causes.append((f"{where}.name", "FieldValueRequired", "Required value"))
                elif len(cname) > 63 or not _DNS1123_LABEL.fullmatch(cname):
                    causes.append(
                        (
                            f"{where}.name",
                            "FieldValueInvalid",
                            f'Invalid value: "{cname}": a lowercase RFC 1123 label must consist of '
                            "lower case alphanumeric characters or '-', and must start and end with an "
                            "alphanumeric character",
                        )
                    )
                elif cname in seen:
                    causes.append((f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{cname}"'))
                seen.add(cname)
                if not (c.get("image") or "").strip():
                    causes.append((f"{where}.image", "FieldValueRequired", "Required value"))
                for j, var in enumerate(c.get("env") or []):
                    sources = [k for k in (var.get("valueFrom") or {}) if (var.get("valueFrom") or {})[k]]
                    if var.get("valueFrom") is not None and len(sources) != 1:
                        causes.append(
                            (
                                f"{where}.env[{j}].valueFrom",
                                "FieldValueInvalid",
                                "Invalid value: may not have more than one field specified at a time",
                            )
                        )
                policy = c.get("terminationMessagePolicy")
                if policy not in (None, "File", "FallbackToLogsOnError"):
                    causes.append(
                        (
                            f"{where}.terminationMessagePolicy",
                            "FieldValueNotSupported",
                            f'Unsupported value: "{policy}": supported values: "File", '
                            '"FallbackToLogsOnError"',
                        )
                    )
        if spec.get("restartPolicy") not in (None, "Always", "OnFailure", "Never"):
            causes.append(
                (
                    "spec.restartPolicy",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{spec.get("restartPolicy")}": supported values: "Always", '
                    '"OnFailure", "Never"',
                )
            )
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
            causes.append(
                (
                    "spec.activeDeadlineSeconds",
                    "FieldValueInvalid",
                    f"Invalid value: {deadline}: must be between 1 and 2147483647, inclusive",
                )
            )

    @staticmethod
    def _default_pod_spec(spec: dict) -> None:
        """The API server's defaulting and admission (ServiceAccount, DefaultTolerationSeconds)."""
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("securityContext", {})
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
        spec.setdefault("serviceAccountName", "default")
        spec["serviceAccount"] = spec["serviceAccountName"]
        tolerations = spec.setdefault("tolerations", [])
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(t.get("key") == key for t in tolerations):
                tolerations.append(
                    {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
                )
        automount = spec.get("automountServiceAccountToken") is not False
        volume_name = f"kube-api-access-{secrets.token_hex(3)[:5]}"
        if automount:
            spec.setdefault("volumes", []).append(
                {
                    "name": volume_name,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {
                                                "apiVersion": "v1",
                                                "fieldPath": "metadata.namespace",
                                            },
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                }
            )
        for group in ("initContainers", "containers"):
            for c in spec.get(group) or []:
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
                image = c.get("image", "")
                reference = _IMAGE_REFERENCE.fullmatch(image)
                tag = reference.group("tag") if reference else None
                pinned = (tag and tag != "latest") or "@" in image
                c.setdefault("imagePullPolicy", "IfNotPresent" if pinned else "Always")
                resources = c.setdefault("resources", {})
                for name, value in (resources.get("limits") or {}).items():
                    resources.setdefault("requests", {}).setdefault(name, value)
                if automount:
                    c.setdefault("volumeMounts", []).append(
                        {
                            "name": volume_name,
                            "readOnly": True,
                            "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        }
                    )
                for var in c.get("env") or []:
                    field_ref = (var.get("valueFrom") or {}).get("fieldRef")
                    if field_ref is not None:
                        field_ref.setdefault("apiVersion", "v1")

    def _patch_pod(self, namespace: str, name: str, body: Any, content_type: str) -> dict:
        pod = self._get("pods", namespace, name)
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise _bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            patched = _json_patch(pod, body)
        elif content_type == "application/merge-patch+json":
            patched = _merge_patch(pod, body)
        elif content_type == "application/strategic-merge-patch+json":
            patched = _strategic_merge_patch(pod, body)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"application/json-patch+json, application/merge-patch+json, "
                f"application/strategic-merge-patch+json (got {content_type})",
            )
        if not isinstance(patched, dict):
            raise _bad_request("the patched object is not a Pod")
        meta, old_meta = patched.setdefault("metadata", {}), pod["metadata"]
        if isinstance(body, dict):
            wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != old_meta["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on pods "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    {"name": name, "kind": "pods"},
                )
        if meta.get("name") != name or meta.get("namespace") != namespace:
            raise _bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL"
            )
        for system_field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if system_field in old_meta:
                meta[system_field] = old_meta[system_field]
            else:
                meta.pop(system_field, None)
        causes: list[tuple[str, str, str]] = []
        _validate_metadata(meta, causes)
        if _immutable_spec(patched.get("spec") or {}) != _immutable_spec(pod["spec"]):
            causes.append(
                (
                    "spec",
                    "FieldValueForbidden",
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                    "(allow it to be set to 1 if it was previously negative)",
                )
            )
        if causes:
            raise _invalid("Pod", name, causes)
        patched = _omit_empty(patched)
        patched["status"] = pod["status"]  # the main resource ignores status changes
        if patched != pod:
            meta["resourceVersion"] = self._next_rv()
        self._objects["pods"][(namespace, name)] = patched
        self._cond.notify_all()
        return copy.deepcopy(patched)

    def _delete_pod(self, namespace: str, name: str, query: dict[str, list[str]], body: Any) -> dict:
        pod = self._get("pods", namespace, name)
        options = body if isinstance(body, dict) else {}
        preconditions = options.get("preconditions") or {}
        for key in ("uid", "resourceVersion"):
            if preconditions.get(key) and preconditions[key] != pod["metadata"][key]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: {key} in precondition: {preconditions[key]}, "
                    f"{key} in object meta: {pod['metadata'][key]}",
                )
        grace_text = _q(query, "gracePeriodSeconds")
        grace = options.get("gracePeriodSeconds")
        if grace_text is not None:
            grace = _parse_int(grace_text, "gracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        meta = pod["metadata"]
        rt = self._runtimes.get((namespace, name))
        if "deletionTimestamp" not in meta:
            meta["deletionTimestamp"] = _ts(_now() + timedelta(seconds=grace))
            meta["deletionGracePeriodSeconds"] = grace
            meta["resourceVersion"] = self._next_rv()
        if rt is None or not rt.active:
            self._remove_pod(namespace, name)
        self._cond.notify_all()
        return copy.deepcopy(pod)

    def _remove_pod(self, namespace: str, name: str) -> None:
        self._objects["pods"].pop((namespace, name), None)
        self._runtimes.pop((namespace, name), None)
        self._cond.notify_all()

    # -- pods: kubelet side -------------------------------------------------------------------------

    def _start_kubelet(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        base = self.workdir / meta["namespace"] / meta["name"]

        def make(c: dict, init: bool) -> _Container:
            return _Container(
                spec=c,
                init=init,
                root=base / c["name"],
                memory_limit=_memory_bytes(((c.get("resources") or {}).get("limits") or {}).get("memory")),
                waiting_reason="PodInitializing"
                if not init and spec.get("initContainers")
                else "ContainerCreating",
            )

        rt = _PodRuntime(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            init_containers=[make(c, True) for c in spec.get("initContainers") or []],
            containers=[make(c, False) for c in spec["containers"]],
        )
        self._runtimes[(rt.namespace, rt.name)] = rt
        rt.thread = threading.Thread(target=self._kubelet, args=(rt,), name=f"kubelet-{rt.name}", daemon=True)
        rt.thread.start()

    def _pod_of(self, rt: _PodRuntime) -> dict | None:
        pod = self._objects["pods"].get((rt.namespace, rt.name))
        return pod if pod is not None and pod["metadata"]["uid"] == rt.uid else None

    def _kubelet(self, rt: _PodRuntime) -> None:
        try:
            self._kubelet_loop(rt)
        except Exception:
            log.exception("fake kubelet failed for pod %s/%s", rt.namespace, rt.name)
            self.errors.append(traceback.format_exc())
            with self._cond:
                rt.active = False

    def _kubelet_loop(self, rt: _PodRuntime) -> None:
        """Drive one pod: schedule it, start its containers, watch them, enforce deadline and deletion."""
        while True:
            kill_reason = None
            with self._cond:
                pod = self._pod_of(rt)
                if pod is None or self._closing:
                    rt.active = False
                    return
                if "deletionTimestamp" in pod["metadata"]:
                    kill_reason = "delete"
                    grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
                elif rt.phase() in ("Succeeded", "Failed") and all(
                    c.state != "running" for c in rt.all_containers()
                ):
                    rt.active = False
                    return
                elif rt.eviction is not None and rt.failure is None:
                    kill_reason = "evict"
                    message, grace = rt.eviction
                    self._event(pod, "Evicted", message, type_="Warning")
                elif self._deadline_exceeded(rt, pod):
                    kill_reason = "deadline"
                    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
                    rt.failure = (
                        "DeadlineExceeded",
                        "Pod was active on the node longer than the specified deadline",
                    )
                    self._event(pod, "DeadlineExceeded", rt.failure[1], type_="Warning")
                    self._sync_status(rt)
                else:
                    self._kubelet_step(rt, pod)
            if kill_reason == "evict":
                # The eviction manager's kill: the pod ends Failed/Evicted once its containers stopped.
                assert rt.eviction is not None
                message = rt.eviction[0]
                disruption = _condition("True", "TerminationByKubelet", message)
                self._kill_pod(rt, grace, failure=("Evicted", message), disruption=disruption)
                continue
            if kill_reason:
                self._kill_pod(rt, grace)
                with self._cond:
                    if kill_reason == "delete":
                        self._remove_pod(rt.namespace, rt.name)
                        rt.active = False
                        return
                continue
            time.sleep(0.02)

    @staticmethod
    def _deadline_exceeded(rt: _PodRuntime, pod: dict) -> bool:
        deadline = pod["spec"].get("activeDeadlineSeconds")
        return (
            deadline is not None
            and rt.started_monotonic is not None
            and rt.failure is None
            and time.monotonic() - rt.started_monotonic >= deadline
        )

    def _kubelet_step(self, rt: _PodRuntime, pod: dict) -> None:
        """One pass of the kubelet's sync loop for a pod (called under the lock)."""
        elapsed = time.monotonic() - rt.created
        if not rt.scheduled:
            if elapsed >= self.schedule_delay:
                rt.scheduled = True
                pod["spec"]["nodeName"] = NODE_NAME
                rt.conditions["PodScheduled"] = _condition("True")
                self._event(
                    pod,
                    "Scheduled",
                    f"Successfully assigned {rt.namespace}/{rt.name} to {NODE_NAME}",
                    component="default-scheduler",
                )
                self._sync_status(rt)
            return
        if not rt.sandbox_ready:
            if elapsed >= self.schedule_delay + self.start_delay:
                rt.sandbox_ready = True
                rt.start_time = _now()
                rt.started_monotonic = time.monotonic()
                rt.pod_ip = f"10.244.0.{next(self._ips) % 250 + 2}"
                self._sync_status(rt)
            return
        changed = False
        for c in rt.all_containers():
            if c.state == "running" and c.memory_limit is not None and not c.oom_killed:
                assert c.process is not None
                if _rss_bytes(c.process.pid) > c.memory_limit:
                    _kill_group(c.process, signal.SIGKILL)  # the cgroup's OOM killer
                    c.oom_killed = True
            if c.state == "running" and c.process is not None and c.process.poll() is not None:
                self._finish_container(rt, c)
                changed = True
        pending_init = next(
            (c for c in rt.init_containers if c.state != "terminated" or c.exit_code != 0), None
        )
        if pending_init is not None:
            if pending_init.state == "waiting":
                changed |= self._try_start(rt, pod, pending_init)
        else:
            for c in rt.containers:
                if c.state == "waiting":
                    changed |= self._try_start(rt, pod, c)
        if changed:
            self._sync_status(rt)

    def _try_start(self, rt: _PodRuntime, pod: dict, c: _Container) -> bool:
        """Try to create and start a container; False when nothing changed (still backing off)."""
        now = time.monotonic()
        if now < c.next_start_attempt:
            return False
        c.next_start_attempt = now + self.config_retry_interval
        image = c.spec.get("image", "")
        if not _IMAGE_REFERENCE.fullmatch(image):
            message = (
                f'Failed to apply default image tag "{image}": couldn\'t parse image name "{image}": '
                "invalid reference format"
            )
            c.waiting_reason, c.waiting_message = "InvalidImageName", message
            self._event(pod, "InspectFailed", message, type_="Warning", container=c.name, init=c.init)
            self._event(
                pod, "Failed", "Error: InvalidImageName", type_="Warning", container=c.name, init=c.init
            )
            return True
        if c.spec.get("imagePullPolicy") == "Always":
            self._event(pod, "Pulling", f'Pulling image "{image}"', container=c.name, init=c.init)
            self._event(
                pod,
                "Pulled",
                f'Successfully pulled image "{image}" in 0s (0s including waiting). Image size: 0 bytes.',
                container=c.name,
                init=c.init,
            )
        else:
            self._event(
                pod,
                "Pulled",
                f'Container image "{image}" already present on machine',
                container=c.name,
                init=c.init,
            )
        try:
            env = self._container_env(pod, c)
        except _ConfigError as error:
            c.waiting_reason, c.waiting_message = "CreateContainerConfigError", str(error)
            self._event(pod, "Failed", f"Error: {error}", type_="Warning", container=c.name, init=c.init)
            return True
        command = [_expand(x, env) for x in c.spec.get("command") or []]
        args = [_expand(x, env) for x in c.spec.get("args") or []]
        argv = command + args if command else args
        if not argv:
            message = "failed to generate container spec: no command specified"
            c.waiting_reason, c.waiting_message = "CreateContainerError", message
            self._event(pod, "Failed", f"Error: {message}", type_="Warning", container=c.name, init=c.init)
            return True
        root = c.root
        termination_log = root / c.spec.get("terminationMessagePath", "/dev/termination-log").lstrip("/")
        termination_log.parent.mkdir(parents=True, exist_ok=True)
        termination_log.touch()
        cwd = root / (c.spec.get("workingDir") or "").lstrip("/")
        cwd.mkdir(parents=True, exist_ok=True)
        full_env = {**self.host_env, "HOSTNAME": rt.name, **env}
        c.container_id = secrets.token_hex(32)
        self._event(pod, "Created", f"Created container: {c.name}", container=c.name, init=c.init)
        try:
            c.process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            c.state, c.exit_code, c.reason = "terminated", 128, "StartError"
            c.started_at = c.finished_at = datetime.fromtimestamp(0, UTC)
            c.message = (
                "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
                f'runc create failed: unable to start container process: exec: "{argv[0]}": '
                f"{'executable file not found in $PATH' if isinstance(error, FileNotFoundError) else error}"
                ": unknown"
            )
            self._event(pod, "Failed", f"Error: {c.message}", type_="Warning", container=c.name, init=c.init)
            return True
        c.state, c.started_at = "running", _now()
        c.reader = threading.Thread(
            target=self._read_output, args=(c,), name=f"log-{rt.name}-{c.name}", daemon=True
        )
        c.reader.start()
        self._event(pod, "Started", f"Started container {c.name}", container=c.name, init=c.init)
        return True

    def _container_env(self, pod: dict, c: _Container) -> dict[str, str]:
        """The container's environment from ``envFrom`` then ``env``, as the kubelet builds it."""
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in c.spec.get("envFrom") or []:
            prefix = source.get("prefix") or ""
            if source.get("configMapRef"):
                ref, kind, data = source["configMapRef"], "configmap", None
                obj = self._objects["configmaps"].get((namespace, ref.get("name", "")))
                data = (obj or {}).get("data") or {}
            elif source.get("secretRef"):
                ref, kind = source["secretRef"], "secret"
                obj = self._objects["secrets"].get((namespace, ref.get("name", "")))
                data = _secret_values(obj)
            else:
                continue
            if obj is None:
                if ref.get("optional"):
                    continue
                raise _ConfigError(f'{kind} "{ref.get("name")}" not found')
            invalid = []
            for key, value in data.items():
                if _ENV_NAME.fullmatch(prefix + key):
                    env[prefix + key] = value
                else:
                    invalid.append(key)
            if invalid:
                self._event(
                    pod,
                    "InvalidEnvironmentVariableNames",
                    f"Keys [{', '.join(sorted(invalid))}] from the EnvFrom {kind} "
                    f"{namespace}/{ref.get('name')} were skipped since they are considered invalid "
                    "environment variable names.",
                    type_="Warning",
                )
        for var in c.spec.get("env") or []:
            name, value_from = var["name"], var.get("valueFrom")
            if not value_from:
                env[name] = _expand(var.get("value") or "", env)
                continue
            if ref := value_from.get("secretKeyRef"):
                obj = self._objects["secrets"].get((namespace, ref.get("name", "")))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise _ConfigError(f'secret "{ref.get("name")}" not found')
                values = _secret_values(obj)
                if ref["key"] not in values:
                    if ref.get("optional"):
                        continue
                    raise _ConfigError(
                        f"couldn't find key {ref['key']} in Secret {namespace}/{ref.get('name')}"
                    )
                env[name] = values[ref["key"]]
            elif ref := value_from.get("configMapKeyRef"):
                obj = self._objects["configmaps"].get((namespace, ref.get("name", "")))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise _ConfigError(f'configmap "{ref.get("name")}" not found')
                values = obj.get("data") or {}
                if ref["key"] not in values:
                    if ref.get("optional"):
                        continue
                    raise _ConfigError(
                        f"couldn't find key {ref['key']} in ConfigMap {namespace}/{ref.get('name')}"
                    )
                env[name] = values[ref["key"]]
            elif ref := value_from.get("fieldRef"):
                env[name] = self._field_ref(pod, ref.get("fieldPath", ""))
            else:
                raise _ConfigError(
                    f"fake kubernetes does not implement env source {sorted(value_from)} ({name})"
                )
        return env

    def _field_ref(self, pod: dict, path: str) -> str:
        meta, status = pod["metadata"], pod.get("status") or {}
        rt = self._runtimes.get((meta["namespace"], meta["name"]))
        pod_ip = rt.pod_ip if rt and rt.pod_ip else ""
        if match := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": NODE_NAME,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.hostIP": NODE_IP,
            "status.hostIPs": NODE_IP,
            "status.podIP": pod_ip or status.get("podIP", ""),
            "status.podIPs": pod_ip or status.get("podIP", ""),
        }
        if path not in simple:
            raise _ConfigError(f'unsupported fieldPath: "{path}"')
        return simple[path]

    def _read_output(self, c: _Container) -> None:
        """Turn the process's merged stdout/stderr into timestamped log lines as they arrive."""
        assert c.process is not None and c.process.stdout is not None
        fd = c.process.stdout.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if complete:
                stamp = time.time_ns()
                with self._cond:
                    c.lines.extend((stamp, line + b"\n") for line in complete)
                    self._cond.notify_all()
        with self._cond:
            if pending:
                c.lines.append((time.time_ns(), pending))
            self._cond.notify_all()
        c.process.stdout.close()

    def _finish_container(self, rt: _PodRuntime, c: _Container) -> None:
        """Record a container's exit (called under the lock once its process has exited)."""
        assert c.process is not None
        _kill_group(c.process, signal.SIGKILL)  # the rest of the container's processes go with it
        if c.reader is not None:
            self._cond.release()
            try:
                c.reader.join(timeout=5)
            finally:
                self._cond.acquire()
        code = c.process.returncode
        c.exit_code = code if code >= 0 else 128 - code
        c.reason = "OOMKilled" if c.oom_killed else "Completed" if c.exit_code == 0 else "Error"
        c.finished_at = _now()
        path = c.root / c.spec.get("terminationMessagePath", "/dev/termination-log").lstrip("/")
        message = path.read_bytes()[:4096].decode("utf-8", "replace") if path.is_file() else ""
        if (
            not message
            and c.exit_code != 0
            and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            tail = b"".join(line for _, line in c.lines[-80:])
            message = tail[-2048:].decode("utf-8", "replace")
        c.message = message or None
        c.state = "terminated"

    def _kill_pod(
        self,
        rt: _PodRuntime,
        grace: int,
        *,
        failure: tuple[str, str] | None = None,
        disruption: dict | None = None,
    ) -> None:
        """Stop every running container: SIGTERM, ``grace`` seconds, SIGKILL (called without the lock).

        ``failure`` (status reason and message) and ``disruption`` (a ``DisruptionTarget`` condition)
        are written with the status that reports the stopped containers, as the kubelet does.
        """
        with self._cond:
            pod = self._pod_of(rt)
            running = [c for c in rt.all_containers() if c.state == "running"]
            for c in running:
                if pod is not None:
                    self._event(pod, "Killing", f"Stopping container {c.name}", container=c.name, init=c.init)
        for c in running:
            _kill_group(c.process, signal.SIGTERM)
        deadline = time.monotonic() + max(grace, 0)
        for c in running:
            assert c.process is not None
            try:
                c.process.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                _kill_group(c.process, signal.SIGKILL)
                c.process.wait()
        with self._cond:
            for c in running:
                self._finish_container(rt, c)
            for c in rt.all_containers():
                if c.state == "waiting":
                    c.state, c.exit_code, c.reason = "terminated", 137, "ContainerStatusUnknown"
                    c.message = "The container could not be located when the pod was terminated"
                    c.finished_at = _now()
            if failure is not None:
                rt.failure = failure
            if disruption is not None:
                rt.conditions["DisruptionTarget"] = disruption
            self._sync_status(rt)

    def _sync_status(self, rt: _PodRuntime) -> None:
        """Write the kubelet's view of the pod into the API object (called under the lock)."""
        pod = self._pod_of(rt)
        if pod is None:
            return
        status: dict[str, Any] = {"phase": rt.phase()}
        phase = status["phase"]
        if rt.sandbox_ready:
            terminal = phase in ("Succeeded", "Failed")
            inits_done = all(c.state == "terminated" and c.exit_code == 0 for c in rt.init_containers)
            ready = not terminal and all(c.state == "running" for c in rt.containers)
            not_ready = [c.name for c in rt.containers if c.state != "running"]
            reason = "PodCompleted" if terminal else "ContainersNotReady"
            message = None if terminal else f"containers with unready status: [{' '.join(not_ready)}]"
            _set_condition(rt, "PodReadyToStartContainers", "False" if terminal else "True")
            _set_condition(
                rt,
                "Initialized",
                "True" if inits_done or terminal else "False",
                None if inits_done or terminal else "ContainersNotInitialized",
            )
            _set_condition(rt, "Ready", "True" if ready else "False", None if ready else reason, message)
            _set_condition(
                rt, "ContainersReady", "True" if ready else "False", None if ready else reason, message
            )
            status.update(
                hostIP=NODE_IP,
                hostIPs=[{"ip": NODE_IP}],
                podIP=rt.pod_ip,
                podIPs=[{"ip": rt.pod_ip}],
                startTime=_ts(rt.start_time or _now()),
            )
            if rt.init_containers:
                status["initContainerStatuses"] = [c.status() for c in rt.init_containers]
            status["containerStatuses"] = [c.status() for c in rt.containers]
        order = [
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
            "DisruptionTarget",
        ]
        conditions = [rt.conditions[t] | {"type": t} for t in order if t in rt.conditions]
        if conditions:
            status["conditions"] = conditions
        if rt.failure:
            status["reason"], status["message"] = rt.failure
        status["qosClass"] = pod["status"].get("qosClass", "BestEffort")
        if status != pod["status"]:
            pod["status"] = status
            pod["metadata"]["resourceVersion"] = self._next_rv()
        self._cond.notify_all()

    # -- logs ---------------------------------------------------------------------------------------

    def _read_log(self, namespace: str, name: str, query: dict[str, list[str]]) -> _Reply:
        pod = self._get("pods", namespace, name)
        rt = self._runtimes.get((namespace, name))
        spec = pod["spec"]
        names = [c["name"] for c in spec["containers"]]
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        container_name = _q(query, "container")
        if not container_name:
            if len(names) != 1:
                hint = f" or one of the init containers: [{' '.join(init_names)}]" if init_names else ""
                raise _bad_request(
                    f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(names)}]{hint}"
                )
            container_name = names[0]
        if container_name not in names + init_names:
            raise _bad_request(f"container {container_name} is not valid for pod {name}")
        if _parse_bool(_q(query, "previous") or "false", "previous"):
            raise _bad_request(f'previous terminated container "{container_name}" in pod "{name}" not found')
        c = rt.container(container_name) if rt else None
        if c is None or c.state == "waiting":
            reason = c.waiting_reason if c else "ContainerCreating"
            raise _bad_request(f'container "{container_name}" in pod "{name}" is waiting to start: {reason}')
        follow = _parse_bool(_q(query, "follow") or "false", "follow")
        timestamps = _parse_bool(_q(query, "timestamps") or "false", "timestamps")
        since_seconds, since_time = _q(query, "sinceSeconds"), _q(query, "sinceTime")
        if since_seconds and since_time:
            raise ApiError(
                422,
                "Invalid",
                "PodLogOptions is invalid: at most one of `sinceTime` or `sinceSeconds` may be specified",
            )
        since_ns = 0
        if since_seconds:
            seconds = _parse_int(since_seconds, "sinceSeconds")
            if seconds < 1:
                raise ApiError(
                    422,
                    "Invalid",
                    "PodLogOptions is invalid: sinceSeconds: Invalid value: must be greater than 0",
                )
            since_ns = time.time_ns() - seconds * 1_000_000_000
        elif since_time:
            since_ns = int(_parse_time(since_time).timestamp() * 1_000_000_000)
        tail = _parse_int(_q(query, "tailLines"), "tailLines") if _q(query, "tailLines") else None
        limit = _parse_int(_q(query, "limitBytes"), "limitBytes") if _q(query, "limitBytes") else None

        def render(entries: Iterable[tuple[int, bytes]]) -> bytes:
            return b"".join(
                (_ts_nano(ts).encode() + b" " + line) if timestamps else line for ts, line in entries
            )

        lines = [(ts, line) for ts, line in c.lines if ts >= since_ns]
        if tail is not None:
            lines = lines[-tail:] if tail > 0 else []
        start = len(c.lines)
        if not follow:
            data = render(lines)
            return _Reply(200, data[:limit] if limit is not None else data, "text/plain")

        def stream() -> Iterator[bytes]:
            sent = 0
            index = start
            first = render(lines)
            while True:
                chunk = first
                first = b""
                with self._cond:
                    while (
                        not chunk
                        and index >= len(c.lines)
                        and c.state == "running"
                        and not self._closing
                        and self._pod_of(rt) is not None
                    ):
                        self._cond.wait(0.5)
                    if index < len(c.lines):
                        chunk += render(c.lines[index:])
                        index = len(c.lines)
                    done = c.state != "running" or self._closing or self._pod_of(rt) is None
                if limit is not None:
                    chunk = chunk[: max(limit - sent, 0)]
                if chunk:
                    sent += len(chunk)
                    yield chunk
                if (done and index >= len(c.lines)) or (limit is not None and sent >= limit):
                    return

        return _Reply(200, stream(), "text/plain")

    # -- generic objects (secrets, configmaps, events, namespaces) -------------------------------

    def _create_object(self, plural: str, namespace: str, body: Any) -> dict:
        if not isinstance(body, dict):
            raise _bad_request(f"the body of the request could not be decoded as a {_KINDS[plural]}")
        self._require_namespace(namespace)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or ""
        if meta.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not name:
            raise _invalid(
                _KINDS[plural],
                name,
                [("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")],
            )
        if (namespace, name) in self._objects[plural]:
            raise ApiError(
                409, "AlreadyExists", f'{plural} "{name}" already exists', {"name": name, "kind": plural}
            )
        meta["namespace"] = namespace
        obj["apiVersion"], obj["kind"] = "v1", _KINDS[plural]
        obj["metadata"] = self._new_meta(
            {k: v for k, v in meta.items() if k not in ("uid", "resourceVersion")}
        )
        if plural == "secrets":
            data = dict(obj.get("data") or {})
            for key, value in (obj.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(value.encode()).decode()
            obj["data"] = data
            obj.setdefault("type", "Opaque")
        self._objects[plural][(namespace, name)] = obj
        self._cond.notify_all()
        return copy.deepcopy(obj)

    # -- routing ------------------------------------------------------------------------------------

    def _check_auth(self, path: str, header: str | None) -> None:
        if self.token is None or path in ("/version", "/healthz", "/livez", "/readyz"):
            return
        if header != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, content_type: str
    ) -> _Reply:
        path = path.rstrip("/") or "/"
        if method == "GET" and path == "/version":
            return _Reply(200, KUBERNETES_VERSION)
        if method == "GET" and path in ("/healthz", "/livez", "/readyz"):
            return _Reply(200, b"ok", "text/plain")
        if method == "GET" and path == "/api":
            return _Reply(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url[7:]}
                    ],
                },
            )
        if method == "GET" and path == "/apis":
            return _Reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if method == "GET" and path == "/api/v1":
            return _Reply(200, _resource_list())
        with self._cond:
            return self._route_objects(method, path, query, body, content_type)

    def _route_objects(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, content_type: str
    ) -> _Reply:
        plurals = "pods|secrets|configmaps|events"
        if match := re.fullmatch(rf"/api/v1/({plurals}|namespaces)", path):
            plural = match.group(1)
            if method == "GET":
                return _Reply(200, self._list(plural, None, query))
            if method == "POST" and plural == "namespaces":
                name = (body or {}).get("metadata", {}).get("name", "") if isinstance(body, dict) else ""
                if ("", name) in self._objects["namespaces"]:
                    raise ApiError(409, "AlreadyExists", f'namespaces "{name}" already exists')
                self.add_namespace(name)
                return _Reply(201, copy.deepcopy(self._objects["namespaces"][("", name)]))
        elif match := re.fullmatch(r"/api/v1/namespaces/([^/]+)", path):
            if method == "GET":
                return _Reply(200, copy.deepcopy(self._get("namespaces", "", match.group(1))))
        elif match := re.fullmatch(rf"/api/v1/namespaces/([^/]+)/({plurals})", path):
            namespace, plural = match.groups()
            if method == "GET":
                return _Reply(200, self._list(plural, namespace, query))
            if method == "POST":
                if plural == "pods":
                    return _Reply(201, self._create_pod(namespace, body))
                return _Reply(201, self._create_object(plural, namespace, body))
        elif match := re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/(log|status)", path):
            namespace, name, sub = match.groups()
            if method == "GET" and sub == "log":
                return self._read_log(namespace, name, query)
            if method == "GET":
                return _Reply(200, copy.deepcopy(self._get("pods", namespace, name)))
        elif match := re.fullmatch(rf"/api/v1/namespaces/([^/]+)/({plurals})/([^/]+)", path):
            namespace, plural, name = match.groups()
            if method == "GET":
                return _Reply(200, copy.deepcopy(self._get(plural, namespace, name)))
            if method == "PATCH" and plural == "pods":
                return _Reply(200, self._patch_pod(namespace, name, body, content_type))
            if method == "DELETE" and plural == "pods":
                return _Reply(200, self._delete_pod(namespace, name, query, body))
            if method == "DELETE":
                obj = self._get(plural, namespace, name)
                del self._objects[plural][(namespace, name)]
                return _Reply(
                    200,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {"name": name, "kind": plural, "uid": obj["metadata"]["uid"]},
                    },
                )
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        raise ApiError(
            405,
            "MethodNotAllowed",
            f"the server does not allow this method on the requested resource ({method})",
        )


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeKubernetes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake kubernetes: " + format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        fake.requests.append(RecordedRequest(method, url.path, query, copy.deepcopy(body)))
        try:
            if isinstance(body, bytes):
                raise _bad_request("the body of the request could not be decoded as JSON")
            fake._check_auth(url.path, self.headers.get("Authorization"))
            reply = fake._route(method, url.path, query, body, content_type)
        except ApiError as error:
            reply = _Reply(error.code, error.status())
        except Exception as error:
            log.exception("fake kubernetes failed on %s %s", method, self.path)
            fake.errors.append(traceback.format_exc())
            reply = _Reply(500, ApiError(500, "InternalError", f"Internal error occurred: {error}").status())
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        if isinstance(reply.body, dict):
            data = json.dumps(reply.body).encode()
        elif isinstance(reply.body, bytes):
            data = reply.body
        else:
            self._send_stream(reply)
            return
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, reply: _Reply) -> None:
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunks: Iterator[bytes] = reply.body
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


# --------------------------------------------------------------------------------------------------
# Helpers of the fake
# --------------------------------------------------------------------------------------------------


def _q(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _kill_group(process: subprocess.Popen | None, sig: int) -> None:
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


_QUANTITY = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[kMGTPE]|[eE][0-9]+)?")
_BINARY_SUFFIXES = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIXES = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def _memory_bytes(quantity: str | int | None) -> int | None:
    """A memory quantity (``48Gi``, ``512M``, ``129e6``, ``1000``) in bytes; None for none."""
    if quantity is None:
        return None
    match = _QUANTITY.fullmatch(str(quantity))
    if match is None:
        raise ValueError(f"unsupported memory quantity {quantity!r}")
    number, suffix = float(match["number"]), match["suffix"] or ""
    if suffix in _BINARY_SUFFIXES:
        return int(number * 1024 ** _BINARY_SUFFIXES[suffix])
    if suffix in _DECIMAL_SUFFIXES:
        return int(number * 1000 ** _DECIMAL_SUFFIXES[suffix])
    return int(number * 10 ** int(suffix[1:] or 0))


def _rss_bytes(pid: int) -> int:
    """The resident set size of a process (0 once it has exited)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError):
        return 0


def _secret_values(secret: dict | None) -> dict[str, str]:
    data = (secret or {}).get("data") or {}
    return {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in data.items()}


def _condition(status: str, reason: str | None = None, message: str | None = None) -> dict:
    condition: dict[str, Any] = {"status": status, "lastProbeTime": None, "lastTransitionTime": _ts(_now())}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _set_condition(
    rt: _PodRuntime, type_: str, status: str, reason: str | None = None, message: str | None = None
) -> None:
    current = rt.conditions.get(type_)
    if current is None or current["status"] != status:
        rt.conditions[type_] = _condition(status, reason, message)
    else:
        current.pop("reason", None)
        current.pop("message", None)
        if reason:
            current["reason"] = reason
        if message:
            current["message"] = message


def _qos_class(spec: dict) -> str:
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    requests_or_limits = False
    guaranteed = True
    for c in containers:
        resources = c.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        if limits or requests:
            requests_or_limits = True
        for name in ("cpu", "memory"):
            if name not in limits or str(requests.get(name, limits[name])) != str(limits[name]):
                guaranteed = False
    if not requests_or_limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


_MAP_FIELDS = {"labels", "annotations", "nodeSelector", "limits", "requests", "overhead", "data"}


def _omit_empty(value: Any, key: str = "") -> Any:
    """Drop what Go's ``omitempty`` drops when the API server re-serialises an object.

    Empty lists, ``null``, empty strings and empty maps (labels, annotations, resources...) disappear;
    empty structs (``securityContext: {}``) stay. Map contents are kept as they are.
    """
    if isinstance(value, dict):
        if key in _MAP_FIELDS:
            return dict(value)
        out = {}
        for k, v in value.items():
            v = _omit_empty(v, k)
            if v is None or v == "" or v == [] or (v == {} and k in _MAP_FIELDS):
                continue
            out[k] = v
        return out
    if isinstance(value, list):
        return [_omit_empty(v) for v in value]
    return value


def _immutable_spec(spec: dict) -> dict:
    """The part of a pod spec that may not change after creation."""
    spec = copy.deepcopy(spec)
    for key in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "nodeName"):
        spec.pop(key, None)
    for group in ("containers", "initContainers"):
        for c in spec.get(group) or []:
            c.pop("image", None)
    return spec


def _resource_list() -> dict:
    def resource(name: str, kind: str, verbs: list[str], namespaced: bool = True) -> dict:
        return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}

    crud = ["create", "delete", "get", "list", "patch"]
    return {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            resource("namespaces", "Namespace", ["create", "get", "list"], namespaced=False),
            resource("pods", "Pod", crud),
            resource("pods/log", "Pod", ["get"]),
            resource("pods/status", "Pod", ["get"]),
            resource("secrets", "Secret", ["create", "delete", "get", "list"]),
            resource("configmaps", "ConfigMap", ["create", "delete", "get", "list"]),
            resource("events", "Event", ["create", "delete", "get", "list"]),
        ],
    }


# --------------------------------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------------------------------


def default_host_env() -> dict[str, str]:
    """The host variables the fixture passes into containers: this venv first on PATH, HOME, LANG."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    env = {"PATH": path, "LANG": "C.UTF-8"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


@pytest.fixture
def fake_kubernetes(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    """A running ``FakeKubernetes`` that the ``kubernetes_default`` Airflow connection points at.

    Namespaces ``default`` and ``flywheel`` exist; containers see ``default_host_env()`` plus their pod
    env. The kubernetes client's process-wide default configuration, which ``load_kube_config`` sets,
    is restored afterwards.
    """
    from kubernetes.client import Configuration

    saved_default = getattr(Configuration, "_default", None)
    with FakeKubernetes(host_env=default_host_env(), namespaces=("flywheel",)) as kube:
        for name, value in kube.connection_env("kubernetes_default").items():
            monkeypatch.setenv(name, value)
        yield kube
    Configuration._default = saved_default
    assert not kube.errors, "\n".join(kube.errors)
