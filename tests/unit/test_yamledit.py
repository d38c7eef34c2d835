"""The GitOps file edit: only the changed fields' lines move, everything else stays as written."""

from __future__ import annotations

import difflib
from collections import Counter

import pytest
import yaml

from aifixer.manifests import diff
from aifixer.models import FieldChange
from aifixer.yamledit import DocumentNotFound, EditError, edit_manifest_file
from aifixer_sandbox import scenario as scenario_mod
from aifixer_sandbox.scenario import bundled_dir

SCENARIOS = sorted((bundled_dir()).glob("*.yaml"))


def changed_lines(a: str, b: str) -> tuple[Counter, Counter]:
    """(removed, added) lines of a line diff from a to b."""
    removed, added = Counter(), Counter()
    for tag, a1, a2, b1, b2 in difflib.SequenceMatcher(
        None, a.splitlines(), b.splitlines(), autojunk=False
    ).get_opcodes():
        if tag != "equal":
            removed.update(a.splitlines()[a1:a2])
            added.update(b.splitlines()[b1:b2])
    return removed, added


def fix_pairs():
    """(scenario, broken file, fixed file) for every bundled scenario with a change."""
    for path in SCENARIOS:
        sc = scenario_mod.load(path)
        fixed = {m.path: m for m in sc.manifests}
        for broken in sc.change:
            if len(broken.documents()) != len(fixed[broken.path].documents()):
                continue  # the change adds an object: no edit of the file removes it
            yield pytest.param(broken, fixed[broken.path], id=f"{sc.name}:{broken.path}")


def apply_fix(broken_text: str, fixed_text: str) -> tuple[str, list[FieldChange]]:
    text, all_changes = broken_text, []
    for bad, good in zip(
        yaml.safe_load_all(broken_text), yaml.safe_load_all(fixed_text), strict=True
    ):
        changes = diff(bad, good)
        if changes:
            meta = good["metadata"]
            text = edit_manifest_file(
                text, good["kind"], meta.get("namespace", "default"), meta["name"], changes
            )
            all_changes += changes
    return text, all_changes


@pytest.mark.parametrize(("broken", "fixed"), list(fix_pairs()))
def test_scenario_fix_gives_the_fixed_content_with_minimal_lines(broken, fixed):
    edited, changes = apply_fix(broken.yaml, fixed.yaml)
    assert changes, "the scenario's change and manifests should differ"
    assert list(yaml.safe_load_all(edited)) == list(yaml.safe_load_all(fixed.yaml))

    ours_removed, ours_added = changed_lines(broken.yaml, edited)
    authored_removed, authored_added = changed_lines(broken.yaml, fixed.yaml)
    # Never a line removed that the scenario's author did not remove to fix it...
    assert not ours_removed - authored_removed, ours_removed - authored_removed
    if all(c.before is not None for c in changes):
        # ... and, for fields that existed, the very lines the author wrote.
        assert ours_added == authored_added


BASE = """\
# shop: report API (owned by team reports)
apiVersion: apps/v1
kind: Deployment
metadata:
  name: report-api
  namespace: shop
  labels: {app: report-api, tier: "backend"}
spec:
  replicas: 2   # two for availability
  template:
    spec:
      containers:
        - name: report-api
          # pinned by the release pipeline
          image: "shop/report-api:2.4.1"  # keep quoted
          command: ["report-api", '--port', "8080"]
          env:
            - name: LOG_LEVEL
              value: info
            # the cache must be reachable before start
            - name: CACHE_HOST
              value: redis.shop.svc
          resources:
            requests: {cpu: 50m, memory: 48Mi}
            limits: {memory: 64Mi}
"""

SECOND = """\
---
apiVersion:   v1      # odd spacing on purpose
kind: Service
metadata: {name: report-api, namespace: shop}
spec:
  ports: [{port: 80, targetPort: 8080}]
"""

POD_PATH = "spec.template.spec.containers[0]"


def edit(text: str, *changes: FieldChange, name="report-api", namespace="shop", kind="Deployment"):
    return edit_manifest_file(text, kind, namespace, name, list(changes))


def test_scalar_change_touches_one_line_and_keeps_flow_style():
    out = edit(BASE, FieldChange(path=f"{POD_PATH}.resources.limits.memory", after="144Mi"))
    removed, added = changed_lines(BASE, out)
    assert list(removed) == ["            limits: {memory: 64Mi}"]
    assert list(added) == ["            limits: {memory: 144Mi}"]


def test_quotes_and_end_of_line_comments_are_kept():
    out = edit(BASE, FieldChange(path=f"{POD_PATH}.image", after="shop/report-api:2.4.2"))
    removed, added = changed_lines(BASE, out)
    assert list(added) == ['          image: "shop/report-api:2.4.2"  # keep quoted']
    assert sum(removed.values()) == 1


def test_other_documents_stay_byte_for_byte():
    text = BASE + SECOND
    out = edit(text, FieldChange(path="spec.replicas", after=3))
    assert out.endswith(SECOND)
    assert out.splitlines()[8] == "  replicas: 3   # two for availability"


def test_the_right_document_is_found_among_several():
    text = BASE + SECOND
    out = edit(text, FieldChange(path="spec.ports[0].port", after=81), kind="Service")
    assert out.startswith(BASE)
    deployment, service = yaml.safe_load_all(out)
    assert deployment == yaml.safe_load(BASE)
    assert service["spec"]["ports"] == [{"port": 81, "targetPort": 8080}]


def test_deleting_a_field_and_adding_a_new_one():
    out = edit(
        BASE,
        FieldChange(path="spec.replicas", after=None),
        FieldChange(path=f"{POD_PATH}.resources.limits.cpu", after="500m"),
        FieldChange(path=f"{POD_PATH}.readinessProbe.httpGet.port", after=8080),
    )
    doc = yaml.safe_load(out)
    assert "replicas" not in doc["spec"]
    container = doc["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"memory": "64Mi", "cpu": "500m"}
    assert container["readinessProbe"] == {"httpGet": {"port": 8080}}
    removed, _ = changed_lines(BASE, out)
    assert list(removed) == [
        "  replicas: 2   # two for availability",
        "            limits: {memory: 64Mi}",
    ]


def test_list_item_removed_keeps_the_comment_written_above_the_next():
    env = [
        {"name": "CACHE_HOST", "value": "redis.shop.svc"},
        {"name": "DATABASE_URL", "value": "postgres://db"},
    ]
    out = edit(BASE, FieldChange(path=f"{POD_PATH}.env", after=env))
    assert yaml.safe_load(out)["spec"]["template"]["spec"]["containers"][0]["env"] == env
    assert "            # the cache must be reachable before start\n" in out
    removed, added = changed_lines(BASE, out)
    assert set(removed) == {"            - name: LOG_LEVEL", "              value: info"}
    assert set(added) == {"            - name: DATABASE_URL", "              value: postgres://db"}


def test_flow_sequence_keeps_its_quotes():
    out = edit(
        BASE, FieldChange(path=f"{POD_PATH}.command", after=["report-api", "--port", "9090"])
    )
    assert """          command: ["report-api", '--port', "9090"]\n""" in out


@pytest.mark.parametrize(
    "text",
    [
        # 4-space maps, dashes not indented under their key
        "kind: Deployment\nmetadata:\n    name: a\nspec:\n    template:\n        spec:\n"
        "            containers:\n            - name: a\n              image: a:1\n",
        # 2-space maps, dashes indented by 2, content by 4
        "kind: Deployment\nmetadata:\n  name: a\nspec:\n  template:\n    spec:\n"
        "      containers:\n        -   name: a\n            image: a:1\n",
    ],
)
def test_the_files_indentation_is_kept(text):
    out = edit(
        text, FieldChange(path=f"{POD_PATH}.image", after="a:2"), name="a", namespace="default"
    )
    assert out == text.replace("a:1", "a:2")


def test_namespace_defaults_to_default():
    text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: a\nspec:\n  replicas: 1\n"
    out = edit(text, FieldChange(path="spec.replicas", after=2), name="a", namespace="default")
    assert out.endswith("  replicas: 2\n")
    with pytest.raises(DocumentNotFound):
        edit(text, FieldChange(path="spec.replicas", after=2), name="a", namespace="shop")


@pytest.mark.parametrize(
    ("kind", "namespace", "name"),
    [
        ("Deployment", "shop", "other"),
        ("Deployment", "prod", "report-api"),
        ("StatefulSet", "shop", "report-api"),
    ],
)
def test_document_not_found(kind, namespace, name):
    with pytest.raises(DocumentNotFound, match=f"{kind} {namespace}/{name}"):
        edit(
            BASE + SECOND,
            FieldChange(path="spec.replicas", after=3),
            kind=kind,
            namespace=namespace,
            name=name,
        )


def test_no_change_returns_the_text_unchanged():
    assert edit(BASE, FieldChange(path="spec.replicas", before=2, after=2)) == BASE


@pytest.mark.parametrize(
    "path", ["spec.replicas.count", "spec.template.spec.containers[3].image", "spec.template[0]"]
)
def test_a_path_that_cannot_be_followed_is_an_edit_error(path):
    with pytest.raises(EditError, match=r"spec\."):
        edit(BASE, FieldChange(path=path, after="x"))


def test_not_yaml_is_an_edit_error():
    with pytest.raises(EditError, match="not valid YAML"):
        edit("kind: [unclosed\n", FieldChange(path="spec.replicas", after=1))
