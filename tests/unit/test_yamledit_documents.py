"""yamledit.edit_document: files that are not Kubernetes objects (kustomizations,
patches, Helm values), edited by path with comments, quoting and block scalars kept."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from aifixer.models import FieldChange
from aifixer.yamledit import DocumentNotFound, edit_document

KUSTOMIZATION = """\
# prod
resources:
  - ../../base   # the base
images:
  - name: ghcr.io/acme/web
    newTag: "1.5.0"   # the release
patches:
  - patch: |-
      - op: replace
        path: /spec/replicas
        value: 3
"""


def load(text: str):
    return YAML(typ="safe", pure=True).load(text)


def test_a_tag_stays_a_quoted_string_and_comments_stay():
    out = edit_document(KUSTOMIZATION, [FieldChange(path="images[0].newTag", after="1.4")])
    assert load(out)["images"][0]["newTag"] == "1.4"
    assert out.replace('"1.4"  ', '"1.5.0"').splitlines()[:6] == KUSTOMIZATION.splitlines()[:6]


def test_an_inline_patch_stays_a_literal_block():
    inner = "- op: replace\n  path: /spec/replicas\n  value: 5"
    out = edit_document(KUSTOMIZATION, [FieldChange(path="patches[0].patch", after=inner)])
    assert "  - patch: |-\n      - op: replace\n" in out and "        value: 5\n" in out
    assert load(out)["patches"][0]["patch"] == inner


def test_the_nth_document_of_a_multi_document_patch():
    text = "# two patches\n---\na: 1\n---\nb: 2  # keep\n"
    out = edit_document(text, [FieldChange(path="b", after=3)], index=1)
    assert out == "# two patches\n---\na: 1\n---\nb: 3  # keep\n"
    with pytest.raises(DocumentNotFound):
        edit_document(text, [FieldChange(path="b", after=3)], index=2)
