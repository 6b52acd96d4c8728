"""`inject`: the admission decision applied to the pod templates of manifests on disk, so
GitOps users can commit injected manifests. Unchanged documents pass through byte for byte."""
from __future__ import annotations

from typing import Any

import re
from collections.abc import Callable

import yaml

from sds_core.policy.config import InjectorConfig

from .existing import strip
from .injector import decide
from .patch import apply

_SEPARATOR = re.compile(r"^---[ \t]*(#[^\r\n]*)?\r?$", re.M)  # CRLF files too
TEMPLATE_PATHS = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}


class InjectError(ValueError):
    pass


def split_documents(text: str) -> list[str]:
    parts, last = [], 0
    for m in _SEPARATOR.finditer(text):
        parts.append(text[last:m.start()])
        last = m.start()
    parts.append(text[last:])
    return [p for p in parts if p]  # whitespace-only parts too: their bytes are passed through


def inject_text(text: str, cfg: InjectorConfig, namespace: str | None = None,
                warn: Callable[[str], None] = lambda m: None) -> str:
    out = []
    for index, doc_text in enumerate(split_documents(text)):
        try:
            doc = yaml.safe_load(doc_text)
        except yaml.YAMLError as e:
            raise InjectError(f"document {index + 1}: not valid YAML: {e}") from None
        new = inject_document(doc, cfg, namespace, index, warn) if isinstance(doc, dict) else None
        if new is None:
            # Exactly as it came: adding even a final newline changes a trailing `|` block.
            out.append(doc_text)
        else:
            body = yaml.safe_dump(new, sort_keys=False, width=1 << 16)
            out.append(("---\n" if doc_text.lstrip().startswith("---") else "") + body)
    return "".join(out)


def inject_document(doc: dict, cfg: InjectorConfig, namespace: str | None, index: int, warn) -> dict | None:
    if doc.get("kind") == "List" or (isinstance(doc.get("kind"), str) and doc["kind"].endswith("List")
                                     and isinstance(doc.get("items"), list)):
        items = doc.get("items") or []
        new_items = [inject_document(i, cfg, namespace, index, warn) if isinstance(i, dict) else None for i in items]
        if all(n is None for n in new_items):
            return None
        return {**doc, "items": [n if n is not None else i for n, i in zip(new_items, items, strict=True)]}
    kind = doc.get("kind")
    path = TEMPLATE_PATHS.get(kind) if isinstance(kind, str) else None
    if path is None:
        template = (doc.get("spec") or {}).get("template") if isinstance(doc.get("spec"), dict) else None
        if isinstance(template, dict) and isinstance((template.get("spec") or {}).get("containers"), list):
            warn(f"document {index + 1} ({doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}): has a "
                 "pod template at spec.template, but inject does not know this kind; not injected")
        return None
    node: Any = doc
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise InjectError(f"document {index + 1} ({doc.get('kind')}): no pod template at {'.'.join(path)}")
    name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
    declared = (doc.get("metadata") or {}).get("namespace")
    if declared and namespace and declared != namespace:
        # The document's own namespace is where the API server will create it: it wins.
        warn(f"{name}: declares namespace {declared}; --namespace {namespace} does not apply to it")
    ns = declared or namespace or "default"
    outcome = decide(node, ns, cfg)
    if outcome.result == "denied":
        raise InjectError(f"{name} in namespace {ns}: {outcome.message}")
    if outcome.result == "skipped":
        warn(f"{name}: not injected ({outcome.reason})")
        return None
    assert outcome.plan is not None, "an inject verdict always carries its plan"
    for w in outcome.warnings:
        warn(f"{name}: {w}")
    injected = apply(strip(node), outcome.plan)
    if not path:
        return injected
    new = dict(doc)
    parent = new
    for key in path[:-1]:
        parent[key] = dict(parent[key])
        parent = parent[key]
    parent[path[-1]] = injected
    return new
