"""Image references parsed strictly, the closest existing tag chosen by rule, and the
playbook that proposes it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from aifixer import guardrails, imageref, playbooks
from aifixer.adapters.errors import PermanentError
from aifixer.adapters.registry import parse_challenge, read_credentials
from aifixer.models import Evidence, ExistingTag, PodState, Revision
from aifixer.settings import Settings

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("ref", "host", "path", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", None, None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("web/storefront:3.1.0", "docker.io", "web/storefront", "3.1.0", None),
        ("docker.io/web/storefront:3.1.0", "docker.io", "web/storefront", "3.1.0", None),
        ("index.docker.io/library/redis:7", "docker.io", "library/redis", "7", None),
        ("ghcr.io/acme/api:v2.0.1", "ghcr.io", "acme/api", "v2.0.1", None),
        ("registry.local:5000/a/b/c:x", "registry.local:5000", "a/b/c", "x", None),
        ("localhost/tools/kit", "localhost", "tools/kit", None, None),
        (f"quay.io/org/app@{DIGEST}", "quay.io", "org/app", None, DIGEST),
    ],
)
def test_references_parse_with_docker_hubs_defaults(ref, host, path, tag, digest) -> None:
    parsed = imageref.parse(ref)
    assert (parsed.host, parsed.path, parsed.tag, parsed.digest) == (host, path, tag, digest)


@pytest.mark.parametrize(
    "ref",
    ["", "a/UPPER:1", "a//b:1", "a/b:-bad", "a/b:" + "x" * 129, "a/b@sha256:zz", 7, None],
)
def test_malformed_references_are_refused(ref) -> None:
    with pytest.raises(imageref.ImageRefError):
        imageref.parse(ref)


def test_a_new_tag_keeps_the_repository_as_written() -> None:
    assert imageref.parse("web/storefront:3.1.O").with_tag("3.1.0") == "web/storefront:3.1.0"
    assert imageref.parse(f"ghcr.io/a/b:1@{DIGEST}").with_tag("2") == "ghcr.io/a/b:2"


@pytest.mark.parametrize(
    ("wanted", "tags", "expected"),
    [
        # typos: the one tag nearest, within 1 (short) or 2 edits
        ("3.1.O", ["3.0.9", "3.1.0"], ("3.1.0", "typo")),
        ("1.8.O", ["1.7.2", "1.8.0"], ("1.8.0", "typo")),
        ("relaese-7", ["release-7", "release-6x"], ("release-7", "typo")),
        ("rc-1x", ["rc-1a", "rc-1b"], None),  # a tie is no guess
        ("abc", ["xyz"], None),
        ("prod-2024-O1", ["prod-2024-01", "prod-2024-02"], ("prod-2024-01", "typo")),
        # missing patch: the newest patch of the same major.minor below it
        ("2.4.3", ["2.3.9", "2.4.1", "2.4.2", "2.5.0"], ("2.4.2", "missing-patch")),
        ("v1.4.7", ["v1.4.5", "1.4.6", "v1.4.8"], ("v1.4.5", "missing-patch")),
        ("1.4.2-alpine", ["1.4.1", "1.4.1-alpine"], ("1.4.1-alpine", "missing-patch")),
        ("2.4.0", ["2.4.1", "2.5.0"], None),  # only newer: no guess
        ("3.0.0", ["2.9.9"], None),  # another minor or major is never chosen
        # moving tags: never wanted, never offered
        ("latest", ["1.0.0"], None),
        ("lates", ["latest"], None),
        ("stabel", ["stable", "1.0.0"], None),
        # the tag exists: the failure is something else
        ("1.0.0", ["1.0.0", "1.0.1"], None),
        (None, ["1.0.0"], None),
    ],
)
def test_the_closest_tag_is_chosen_only_when_clearly_meant(wanted, tags, expected) -> None:
    choice = imageref.closest_tag(wanted, tags)
    assert (None if choice is None else (choice.tag, choice.rule)) == expected


def test_invalid_tags_from_a_registry_are_never_offered() -> None:
    assert imageref.closest_tag("1.8.O", ["1.8.0 ", "1.8.0\n", "-1.8.0", "1.8.0/x"]) is None
    assert imageref.valid_tags(["ok", 3, None, "no tag", "x" * 200]) == ["ok"]


@given(st.text(max_size=12), st.lists(st.text(max_size=12), max_size=20))
def test_the_choice_is_always_an_existing_valid_tag(wanted, tags) -> None:
    choice = imageref.closest_tag(wanted, tags)
    if choice is not None:
        assert choice.tag in tags and choice.tag != wanted
        assert imageref.TAG.fullmatch(choice.tag) and not imageref.is_moving(choice.tag)


def test_the_edit_distance_counts_a_swap_once() -> None:
    assert imageref.edit_distance("relaese", "release") == 1
    assert imageref.edit_distance("1.8.O", "1.8.0") == 1
    assert imageref.edit_distance("short", "a-much-longer-tag", 2) == 3


def test_challenges_and_credentials_are_read() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/nginx:pull,push",
    }
    config = (
        '{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpzM2NyZXQ="},'
        ' "ghcr.io": {"username": "bot", "password": "ghp_x"}}}'
    )
    assert read_credentials(SecretStr(config)) == {
        "docker.io": ("user", "s3cret"),
        "ghcr.io": ("bot", "ghp_x"),
    }
    with pytest.raises(PermanentError) as caught:
        read_credentials(SecretStr('{"auths": {"x": {"auth": "not base64 s3cret!"}}}'))
    assert "s3cret" not in str(caught.value)


def test_registry_settings_default_to_none_and_hide_credentials() -> None:
    settings = Settings(_env_file=None)
    assert settings.registries == [] and settings.registry_credentials is None
    settings = Settings(
        _env_file=None,
        registries="Docker.io, ghcr.io",
        registry_urls="ghcr.io=https://ghcr.example",
        registry_credentials=SecretStr('{"auths": {}}'),
    )
    assert settings.registries == ["docker.io", "ghcr.io"]
    assert '{"auths"' not in repr(settings)
    with pytest.raises(ValueError):
        Settings(_env_file=None, registry_urls="ghcr.io=ftp://x")


# -- the playbook ---------------------------------------------------------------------


def _born_broken(image: str, existing: list[ExistingTag]) -> Evidence:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "price-feed", "namespace": "market"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "price-feed"}},
            "template": {
                "metadata": {"labels": {"app": "price-feed"}},
                "spec": {"containers": [{"name": "feed", "image": image}]},
            },
        },
    }
    return Evidence(
        deployment=deployment,
        pods=[
            PodState(
                name="p",
                phase="Pending",
                ready=False,
                reasons=["ImagePullBackOff"],
                restart_count=0,
            )
        ],
        events=[],
        logs=[],
        pod_logs={},
        revisions=[
            Revision(revision=1, replicaset="rs", images=[image], ready_replicas=0, current=True)
        ],
        last_healthy_template=None,
        template_diff=[],
        healthy=False,
        existing_tags=existing,
    )


def _tag(image: str, tag: str, container: str = "feed") -> ExistingTag:
    return ExistingTag(
        container=container, image=image, tag=tag, digest=DIGEST, rule="typo", why="one edit"
    )


def test_the_playbook_proposes_the_existing_tag_and_passes_the_guardrails() -> None:
    settings = Settings(_env_file=None)
    evidence = _born_broken("market/price-feed:1.8.O", [_tag("market/price-feed:1.8.O", "1.8.0")])
    [proposal] = playbooks.candidates(evidence, "ImagePull", settings)
    assert proposal.strategy == "closest-existing-tag"
    assert [(c.path, c.after) for c in proposal.changes] == [
        ("spec.template.spec.containers[0].image", "market/price-feed:1.8.0")
    ]
    assert DIGEST in proposal.rationale
    assert guardrails.check(evidence.deployment, proposal.manifest, evidence, settings) == []


@pytest.mark.parametrize(
    "existing",
    [
        [],  # no registry configured, or nothing clearly meant
        [_tag("market/price-feed:1.8.O", "1.8.0", container="other")],
        [_tag("market/price-feed:1.7.O", "1.8.0")],  # read for another image
        [_tag("market/price-feed:1.8.O", "1.8.0 ; rm")],  # not a tag
    ],
)
def test_the_playbook_offers_nothing_it_cannot_stand_behind(existing) -> None:
    evidence = _born_broken("market/price-feed:1.8.O", existing)
    assert playbooks.candidates(evidence, "ImagePull", Settings(_env_file=None)) == []
