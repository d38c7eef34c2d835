"""What a GitOps repository, or a workload's annotations, cannot make aifixer do.

Anyone who can push to the repository or deploy a workload writes these inputs, while
the farm holds the cluster token and the forge's secrets. Each test plants what an
attacker would, renders through the real kubectl kustomize and helm template, and
checks that nothing ran, nothing outside the checkout was read or written, and nothing
was fetched.
"""

from __future__ import annotations

import base64
import http.server
import threading
import time
from dataclasses import replace
from pathlib import Path

import git
import pytest

from aifixer.adapters import render as render_mod
from aifixer.adapters.errors import PermanentError, TransientError
from aifixer.adapters.forge import RELEASE_ANNOTATION, SOURCE_ANNOTATION, Forge
from aifixer.adapters.render import Renderer
from aifixer.manifests import apply_changes
from aifixer.models import FieldChange, Workload
from aifixer.sources import Layout, SourceError, change_source, rendered_layouts
from tests.gitops_fixtures import CHART, HELM, KUBECTL, KUSTOMIZE, tool_settings, write
from tests.integration.test_adapter_forge import (
    OOM,
    fixed_state,
    fixed_world,
    github,
    settings_for,
)
from tests.integration.test_forge_gitops_layouts import commit, render, state_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WEB = Workload(cluster="app", namespace="shop", name="web")
C0 = "spec.template.spec.containers[0]"


def script_chart(marker: Path) -> dict[str, str]:
    """A chart whose render holds a shell line: piped into `sh`, it creates `marker`."""
    return {
        "Chart.yaml": "apiVersion: v2\nname: script\nversion: 0.1.0\n",
        "templates/script.yaml": f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: script
data:
  run.sh: |
    touch {marker}
""",
    }


def under(prefix: str, files: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}/{path}": text for path, text in files.items()}


@pytest.fixture
def renderer() -> Renderer:
    return Renderer(tool_settings())


def forge() -> Forge:
    return Forge(tool_settings(github_repo="acme/gitops", github_token="not-used"))


# -- 1. nothing from the repository or an annotation is read as a tool's option -------


def test_a_release_name_that_is_an_option_never_reaches_helm(renderer, tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    write(repo, {**CHART, **under("charts/web", script_chart(marker))})

    with pytest.raises(PermanentError, match="not a Helm release name"):
        renderer.render(
            repo, Layout("helm", "charts/web", release="--post-renderer=sh", namespace="shop")
        )
    with pytest.raises(PermanentError, match="not a namespace name"):
        renderer.render(
            repo, Layout("helm", "charts/web", release="web", namespace="--post-renderer=sh")
        )
    assert not marker.exists()


def test_scanned_directories_named_like_options_are_never_rendered(renderer, tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    (tmp_path / "secret.txt").write_text("outside-the-checkout\n")
    write(
        repo,
        {
            # Built from the checkout's root with the load restrictor off, this would
            # read the file beside the checkout.
            "kustomization.yaml": "configMapGenerator:\n"
            "  - name: leak\n    files: [../secret.txt]\n",
            "--load-restrictor=LoadRestrictionsNone/kustomization.yaml": "resources: []\n",
            # `helm template web --post-renderer=sh` renders ./web through sh.
            **under("web", script_chart(marker)),
            **under("--post-renderer=sh", script_chart(marker)),
        },
    )

    layouts = rendered_layouts(repo, release="web", namespace="shop")

    assert all(not layout.path.startswith("-") for layout in layouts)
    renders = []
    for layout in [*layouts, Layout("kustomize", "--load-restrictor=LoadRestrictionsNone")]:
        try:
            renders.append(renderer.render(repo, layout))
        except PermanentError as exc:
            renders.append(exc.message)
    assert not any("outside-the-checkout" in text for text in renders)
    assert not marker.exists()


def test_a_configured_path_that_is_an_option_or_escapes_is_refused(renderer, tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    write(repo, {**under("web", script_chart(marker)), **under("--post-renderer=sh", CHART)})
    (tmp_path / "other").mkdir()
    write(tmp_path / "other", CHART)

    for path in ("--post-renderer=sh", "../other/charts/web", str(tmp_path / "other/charts/web")):
        with pytest.raises(PermanentError, match="refused"):
            forge()._layout(repo, path, WEB, "web")
    with pytest.raises(PermanentError, match="refused"):
        renderer.render(repo, Layout("helm", "--post-renderer=sh", release="web", namespace="shop"))
    with pytest.raises(PermanentError, match="refused"):
        renderer.render(
            repo,
            Layout("helm", "web", values=("--post-renderer=sh",), release="web", namespace="shop"),
        )
    assert not marker.exists()


def test_a_hostile_release_annotation_renders_as_the_workload_name(make_world, tmp_path):
    _, world = fixed_world(make_world, OOM)
    marker = tmp_path / "ran"
    commit(world, {**CHART, **under("charts/web", script_chart(marker))})
    main = tmp_path / "main"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, main)
    live = render([HELM, "template", "web", "charts/web", "--namespace", "shop"], main)
    memory = FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="160Mi")
    annotations = {SOURCE_ANNOTATION: "charts/web", RELEASE_ANNOTATION: "--post-renderer=sh"}

    forge = Forge(settings_for(world, kubectl_bin=KUBECTL, helm_bin=HELM))
    ref = forge.open_fix_pr(state_for(live, [memory], "fphostilerelease", annotations))

    assert not marker.exists()
    branch = tmp_path / "branch"
    git.Repo.clone_from(world.endpoints.gitops_clone_url, branch, branch=ref.branch)
    argv = [HELM, "template", "web", "charts/web", "--namespace", "shop"]
    assert render(argv, branch) == apply_changes(live, [memory])


# -- 2. symbolic links never reach out of the checkout -------------------------------


def test_helm_never_follows_a_chart_link_out_of_the_checkout(renderer, tmp_path):
    repo = tmp_path / "repo"
    (tmp_path / "outside.txt").write_text("outside-the-checkout\n")
    write(repo, CHART)
    write(
        repo,
        {
            "charts/web/templates/leak.yaml": "apiVersion: v1\nkind: ConfigMap\n"
            'metadata: {name: leak}\ndata:\n  leak: {{ .Files.Get "leak" | quote }}\n'
        },
    )
    (repo / "charts/web/leak").symlink_to(tmp_path / "outside.txt")

    with pytest.raises(PermanentError, match="symbolic link out of the repository") as err:
        renderer.render(repo, Layout("helm", "charts/web", release="web", namespace="shop"))
    assert "outside-the-checkout" not in err.value.message


def test_a_values_file_linked_out_of_the_checkout_is_neither_read_nor_written(renderer, tmp_path):
    # The renders see the link's target (rendered from the directory above), so only
    # aifixer.sources stands between the edit and the file outside the checkout.
    outer = tmp_path / "outer"
    repo = outer / "repo"
    write(repo, CHART)
    outside = outer / "outvals.yaml"
    outside.write_text(CHART["charts/web/values.yaml"])
    (repo / "charts/web/values.yaml").unlink()
    (repo / "charts/web/values.yaml").symlink_to(outside)
    memory = FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="160Mi")

    def render_from_above(layout: Layout) -> str:
        return renderer.render(outer, replace(layout, path=f"repo/{layout.path}"))

    with pytest.raises(SourceError, match="outside the repository"):
        change_source(
            repo,
            Layout("helm", "charts/web", release="web", namespace="shop"),
            WEB,
            [memory],
            render_from_above,
        )
    assert outside.read_text() == CHART["charts/web/values.yaml"]


def test_a_checkout_reached_through_a_symlinked_directory_is_proven(renderer, tmp_path):
    write(tmp_path / "real", KUSTOMIZE)
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    root = tmp_path / "linked"
    fix = FieldChange(
        path=f"{C0}.image", before="ghcr.io/acme/web:1.5.0-bad", after="ghcr.io/acme/web:1.4.2"
    )

    change = change_source(
        root,
        Layout("kustomize", "overlays/prod"),
        WEB,
        [fix],
        lambda lay: renderer.render(root, lay),
    )

    assert [e.path for e in change.edits] == ["overlays/prod/kustomization.yaml"]


def git_env(world, name: str = "a person", email: str = "person@example.com") -> dict:
    """Pushes to the sandbox forge as `name` <`email`>."""
    basic = base64.b64encode(f"x-access-token:{world.endpoints.github_token}".encode()).decode()
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
           for what, value in (("NAME", name), ("EMAIL", email))},
    }  # fmt: skip


def push_with_links(world, tmp_path: Path, files: dict[str, str], links: dict[str, Path]) -> None:
    """Commit `files` and symbolic links (path -> target) to the repository, as a person."""
    env = git_env(world)
    work = tmp_path / "person"
    checkout = git.Repo.clone_from(world.endpoints.gitops_clone_url, work, env=env)
    write(work, files)
    for path, target in links.items():
        (work / path).unlink(missing_ok=True)
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).symlink_to(target)
    checkout.git.add("--all")
    checkout.git.commit("-m", "links", env=env)
    checkout.git.push("origin", "HEAD", env=env)


def test_links_in_the_repository_reach_nothing_outside_the_checkout(make_world, tmp_path):
    _, world = fixed_world(make_world, OOM)
    outside, notes = tmp_path / "outvals.yaml", tmp_path / "notes"
    values = "# outside-the-checkout\n" + CHART["charts/web/values.yaml"]
    outside.write_text(values)
    notes.mkdir()
    push_with_links(world, tmp_path, CHART, {"charts/web/values.yaml": outside, ".aifixer": notes})
    annotations = {SOURCE_ANNOTATION: "charts/web"}
    memory = FieldChange(path=f"{C0}.resources.limits.memory", before="96Mi", after="160Mi")
    main = tmp_path / "main"  # a person's clone follows the link
    git.Repo.clone_from(world.endpoints.gitops_clone_url, main)
    live = render([HELM, "template", "web", "charts/web", "--namespace", "shop"], main)
    state = state_for(live, [memory], "fplinks", annotations)
    forge = Forge(settings_for(world, kubectl_bin=KUBECTL, helm_bin=HELM))

    with pytest.raises(PermanentError) as err:
        forge.open_fix_pr(state)
    assert "outside-the-checkout" not in err.value.message
    assert outside.read_text() == values  # neither edited nor restored through the link
    with pytest.raises(PermanentError, match="cannot write the note"):
        forge.open_draft_pr(state, "explained", ["a hand edit"])

    assert list(notes.iterdir()) == []
    assert world.call(world.forge.prs) == []


# -- 3. a kustomize render fetches nothing -------------------------------------------


@pytest.fixture
def web_server():
    """A server on 127.0.0.1 that serves a ConfigMap and records every request."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            requests.append(self.path)
            body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fetched}\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


REFUSED_KUSTOMIZATIONS = {
    "url": "resources: [{url}/cm.yaml]\n",
    "remote target": "resources:\n  - github.com/acme/gitops//base?ref=v1\n",
    "escape": "configMapGenerator:\n  - name: leak\n    files: [../../secret.txt]\n",
    "escape in a base": "resources: [../base-escape]\n",
    "patch outside": "resources: [cm.yaml]\npatches:\n  - path: ../../secret.txt\n",
    "helm chart": "helmCharts:\n  - name: web\n    repo: {url}/charts\n    version: 1.0.0\n",
    "exec plugin": "resources: [cm.yaml]\ntransformers: [plugin.yaml]\n",
    "remote generator": "generators: [{url}/gen.yaml]\n",
}


@pytest.mark.parametrize("case", sorted(REFUSED_KUSTOMIZATIONS))
def test_a_kustomization_reaching_beyond_the_checkout_is_refused(
    case, renderer, tmp_path, web_server
):
    url, requests = web_server
    repo = tmp_path / "repo"
    (tmp_path / "secret.txt").write_text("outside-the-checkout\n")
    write(
        repo,
        {
            "app/kustomization.yaml": REFUSED_KUSTOMIZATIONS[case].format(url=url),
            "app/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
            "app/plugin.yaml": "apiVersion: acme.io/v1\nkind: Runner\nmetadata:\n  name: run\n"
            "  annotations:\n    config.kubernetes.io/function: |\n"
            "      exec: {path: /bin/sh}\n",
            "base-escape/kustomization.yaml": "resources: [../../secret.txt]\n",
        },
    )

    with pytest.raises(PermanentError, match="refused") as err:
        renderer.render(repo, Layout("kustomize", "app"))

    assert "outside-the-checkout" not in err.value.message
    assert requests == []


def test_local_resources_and_built_in_transformers_still_render(renderer, tmp_path):
    write(tmp_path, KUSTOMIZE)
    write(
        tmp_path,
        {
            "overlays/prod/labels.yaml": "apiVersion: builtin\nkind: LabelTransformer\n"
            "metadata: {name: team}\nlabels: {team: shop}\nfieldSpecs:\n"
            "  - {path: metadata/labels, create: true}\n",
            "overlays/prod/env.txt": "LEVEL=info\n",
        },
    )
    kfile = tmp_path / "overlays/prod/kustomization.yaml"
    kfile.write_text(
        kfile.read_text() + "transformers: [labels.yaml]\n"
        "configMapGenerator:\n  - name: web-env\n    envs: [env.txt]\n"
    )

    text = renderer.render(tmp_path, Layout("kustomize", "overlays/prod"))

    assert "team: shop" in text and "LEVEL: info" in text


def test_the_tools_run_without_a_way_out(renderer, tmp_path):
    """Besides the checks, the render's environment sends HTTP(S) nowhere and lets git
    read local files only."""
    env = renderer._run("env", "AIFIXER_KUBECTL_BIN", ["env"], tmp_path)
    lines = set(env.splitlines())

    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert f"{proxy}=http://127.0.0.1:9" in lines
    assert {"NO_PROXY=", "GIT_TERMINAL_PROMPT=0", "GIT_ALLOW_PROTOCOL=file"} <= lines


# -- 4. a render is bounded: what it writes, its memory, its time --------------------


def test_a_render_cannot_write_past_its_output_bound(renderer, tmp_path, monkeypatch):
    monkeypatch.setattr(render_mod, "MAX_OUTPUT", 256 * 1024)
    monkeypatch.setattr(render_mod, "FILE_MARGIN", 64 * 1024, raising=False)
    # Any file the render's process writes (its output included) stops at the bound.
    with pytest.raises(PermanentError):
        renderer._run("sh", "-", ["sh", "-c", "head -c 4000000 /dev/zero > big"], tmp_path)
    assert (tmp_path / "big").stat().st_size <= 320 * 1024
    # A chart that renders more than the bound: refused, its output never kept whole.
    write(tmp_path / "repo", CHART)
    write(
        tmp_path / "repo",
        {
            "charts/web/templates/big.yaml": "{{- range until 20000 }}\n---\n"
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big-{{ . }}}\n"
            "data: {filler: '{{ repeat 100 \"x\" }}'}\n{{- end }}\n"
        },
    )
    with pytest.raises(PermanentError, match="rendered over 262144 bytes"):
        renderer.render(
            tmp_path / "repo", Layout("helm", "charts/web", release="web", namespace="shop")
        )


def test_normal_renders_fit_in_the_memory_bound(renderer, tmp_path):
    write(tmp_path, {**KUSTOMIZE, **CHART})
    assert "kind: Deployment" in renderer.render(tmp_path, Layout("kustomize", "overlays/prod"))
    helm = Layout("helm", "charts/web", release="web", namespace="shop")
    assert "kind: Deployment" in renderer.render(tmp_path, helm)
    limits = renderer._run("sh", "-", ["sh", "-c", "ulimit -v; ulimit -f"], tmp_path).split()
    assert int(limits[0]) * 1024 == render_mod.MAX_MEMORY
    assert int(limits[1]) * 512 == render_mod.MAX_OUTPUT + render_mod.FILE_MARGIN


def test_a_timeout_kills_everything_the_render_started(tmp_path):
    renderer = Renderer(tool_settings(render_timeout_s=1))
    script = "sleep 60 & echo $! > pid; wait"
    with pytest.raises(TransientError, match="did not finish"):
        renderer._run("sh", "-", ["sh", "-c", script], tmp_path)
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


# -- 5. a person's commit on an aifixer branch is never replaced ----------------------


def commit_on_branch(world, work: Path, branch: str, path: str, env: dict, message: str) -> str:
    """Clone `branch`, change `path` there, commit and push it; the new tip's sha."""
    checkout = git.Repo.clone_from(world.endpoints.gitops_clone_url, work, branch=branch, env=env)
    file = work / path
    file.write_text(file.read_text() + f"# {message}\n")
    checkout.git.add(path)
    checkout.git.commit("-m", message, env=env)
    checkout.git.push("origin", f"HEAD:refs/heads/{branch}", env=env)
    return checkout.head.commit.hexsha


def test_a_branch_a_person_committed_on_is_not_force_pushed(make_world, tmp_path):
    sc, world = fixed_world(make_world)
    state = fixed_state(sc, "fpperson")
    settings = settings_for(world)
    forge = Forge(settings)
    first = forge.open_fix_pr(state)
    repo = github(world).get_repo(world.endpoints.gitops_repo)
    (path,) = [f.filename for f in repo.get_pull(first.number).get_files()]
    repo.get_pull(first.number).edit(state="closed")
    # An older attempt of aifixer's own on the branch is replaced by the verified change.
    own = git_env(world, settings.git_author_name, settings.git_author_email)
    trailer = f"an older attempt\n\nAifixer-Incident: {state.incident.id}"
    older = commit_on_branch(world, tmp_path / "own", first.branch, path, own, trailer)

    second = forge.open_fix_pr(state)

    assert second.created and repo.get_branch(first.branch).commit.sha != older
    repo.get_pull(second.number).edit(state="closed")
    person = commit_on_branch(
        world, tmp_path / "person", first.branch, path, git_env(world), "mine"
    )

    with pytest.raises(PermanentError, match="a person has committed on branch"):
        forge.open_fix_pr(state)

    assert repo.get_branch(first.branch).commit.sha == person
    assert [p.number for p in repo.get_pulls(state="open")] == []
