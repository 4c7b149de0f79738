"""The module map in docs/architecture.md names every module, so a newcomer can trust it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> list[str]:
    paths = []
    for top in ("ctxproto", "runtime", "stores"):
        for path in (ROOT / top).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] in (("ctxproto", "runtime"), ("ctxproto", "stores")):
                continue  # the links to runtime/ and stores/, listed under their own names
            if path.name not in ("__init__.py", "__main__.py"):
                paths.append(relative.as_posix())
    return sorted(paths)


def test_the_module_map_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Module map") :]
    listed = set(re.findall(r"`([\w/]+\.py)`", section))
    missing = [module for module in _modules() if module not in listed]
    assert not missing, f"add these to docs/architecture.md's module map: {missing}"
    sources = {name for name in listed if name.startswith(("ctxproto/", "runtime/", "stores/"))}
    stale = sorted(sources - set(_modules()))
    assert not stale, f"the module map names modules that do not exist: {stale}"


# -- the guides: README.md and docs/*.md ---------------------------------------------------

GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(path: Path) -> str:
    """The file's text without its fenced code blocks (a `#` there is no heading)."""
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings (repeats get -1, -2, ...)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _prose(path), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_links_between_the_guides_resolve() -> None:
    broken = []
    for path in GUIDES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(path)):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)}: ({target})"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{where}: no such heading")
    assert not broken, broken


def _code_text() -> str:
    parts = []
    for top in ("ctxproto", "runtime", "stores"):
        parts += [p.read_text(encoding="utf-8") for p in (ROOT / top).rglob("*.py")]
    return "\n".join(parts)


# Environment variables of other programs, which the guides tell users to set.
_OTHER_PROGRAMS_NAMES = {"NLTK_DATA", "PGPASSWORD"}


def test_constants_the_guides_name_exist() -> None:
    """`MAX_REQUEST_BYTES`, `PACKED_ROWS`, ...: a constant renamed or removed leaves the
    guide pointing at nothing."""
    code = _code_text()
    missing = set()
    for path in GUIDES:
        if path.name == "benchmarks.md":
            continue
        for name in re.findall(r"`([A-Z][A-Z0-9_]{3,})`", path.read_text(encoding="utf-8")):
            if name not in _OTHER_PROGRAMS_NAMES and not re.search(rf"\b{name}\b", code):
                missing.add(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, sorted(missing)


def test_the_readme_lists_every_field_of_run_json() -> None:
    from ctxproto import ChatRequest, Pipeline, RecencyWindow

    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}]})
    summary = Pipeline([RecencyWindow(max_turns=2)]).run(request).summary()
    fields = set(summary) | set(summary["stages"][0])
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = text[text.index("`--json` prints one object with") :].split("\n\n", 1)[0]
    named = set(re.findall(r"`(\w+)`", paragraph))
    assert not fields - named, f"README.md does not name {sorted(fields - named)}"
    assert not named - fields, f"`ctxproto run --json` prints no {sorted(named - fields)}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation admits (through Optional, unions, Annotated, lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _config_key_problems(node: yaml.Node, model: type[BaseModel], where: str) -> list[str]:
    """Keys of a YAML mapping that ``model`` has no field for, recursively."""
    if not isinstance(node, yaml.MappingNode):
        return []
    from ctxproto.config import PipelineConfig
    from ctxproto.runtime.params import GenerationParams
    from ctxproto.stages.registry import get_stage_class

    problems = []
    for key_node, value in node.value:
        key = key_node.value
        field = model.model_fields.get(key)
        if field is None:
            problems.append(f"{where}{key}")
            continue
        if model.__name__ == "ServeConfig" and key == "pipeline":
            problems += _config_key_problems(value, PipelineConfig, f"{where}{key}.")
        elif model.__name__ == "_SessionSettings" and key == "generation":
            problems += _config_key_problems(value, GenerationParams, f"{where}{key}.")
        elif model.__name__ == "StageSpec" and key == "init_parameters":
            kind = next(v.value for k, v in node.value if k.value == "type")
            problems += _config_key_problems(value, get_stage_class(kind), f"{where}{key}.")
        else:
            items = value.value if isinstance(value, yaml.SequenceNode) else [value]
            candidates = _models_in(field.annotation)
            if isinstance(value, yaml.MappingNode) and len(candidates) > 1:  # by `type:`
                kind = next((v.value for k, v in value.value if k.value == "type"), None)
                candidates = [
                    m for m in candidates if kind in get_args(m.model_fields["type"].annotation)
                ]
            for item in items:
                for candidate in candidates[:1]:
                    problems += _config_key_problems(item, candidate, f"{where}{key}.")
    return problems


def test_config_keys_in_the_guides_exist() -> None:
    """Every key of a YAML example in the guides is a field of the config it belongs to:
    a pipeline (with a chatbot's session keys) or a serve config, stages' parameters
    included. A key renamed in the code, or misspelt in a guide, fails here."""
    from ctxproto.config import PipelineConfig
    from ctxproto.serve.config import ServeConfig
    from ctxproto.session import _SessionSettings

    problems, blocks = [], 0
    for path in GUIDES:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"^```yaml\n(.*?)^```", text, flags=re.M | re.S):
            blocks += 1
            root = yaml.compose(block.replace("{...}", "{}"), Loader=yaml.SafeLoader)
            assert isinstance(root, yaml.MappingNode)
            keys = {key.value for key, _ in root.value}
            if keys & set(ServeConfig.model_fields):
                problems += _config_key_problems(root, ServeConfig, f"{path.name}: ")
                continue
            for key, value in root.value:  # a pipeline, or a chatbot config
                owner = _SessionSettings if key.value in _SessionSettings.model_fields else None
                single = yaml.MappingNode("tag:yaml.org,2002:map", [(key, value)])
                where = f"{path.name}: "
                problems += _config_key_problems(single, owner or PipelineConfig, where)
    assert blocks >= 5  # README.md, retrieval.md, serve.md, mcp.md, deploy.md
    assert not problems, f"no such config key: {problems}"


def test_the_serve_guides_name_every_config_key() -> None:
    """docs/serve.md's config example names every key of the serve config (some in its
    comments), and docs/mcp.md's every key of the ``mcp:`` section."""
    from ctxproto.serve.config import (
        LimitsConfig,
        LocalUpstreamConfig,
        McpConfig,
        RemoteUpstreamConfig,
        ServeConfig,
        SessionConfig,
        TenantConfig,
    )

    def config_block(name: str) -> str:
        text = (ROOT / "docs" / name).read_text(encoding="utf-8")
        blocks: list[str] = re.findall(r"^```yaml\n(.*?)^```", text, flags=re.M | re.S)
        return blocks[0]

    serve = set(re.findall(r"\w+", config_block("serve.md")))
    models = (
        ServeConfig,
        LocalUpstreamConfig,
        RemoteUpstreamConfig,
        TenantConfig,
        SessionConfig,
        LimitsConfig,
    )
    missing = [f"{m.__name__}.{f}" for m in models for f in m.model_fields if f not in serve]
    mcp = set(re.findall(r"\w+", config_block("mcp.md")))
    missing += [f"McpConfig.{f}" for f in McpConfig.model_fields if f not in mcp]
    assert not missing, f"the config examples of docs/serve.md and docs/mcp.md miss {missing}"


def test_stage_parameters_in_the_stages_guide_exist() -> None:
    """The parameters docs/stages.md names in a stage's section, and the defaults it
    states, are those of the stage."""
    from ctxproto.stages.registry import builtin_stages

    text = _prose(ROOT / "docs" / "stages.md")
    stages = builtin_stages()
    problems = []
    checked = 0
    for name, section in re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S):
        if name not in stages:
            continue
        fields = stages[name].model_fields
        named = re.findall(r"^- `(\w+)`(?: / `(\w+)`)?", section, flags=re.M)
        named += [(key, "") for key in re.findall(r"`(\w+): [^`]+`", section)]
        for key in {k for pair in named for k in pair if k}:
            checked += 1
            if key not in fields:
                problems.append(f"{name}.{key}: no such parameter")
        for key, stated in re.findall(r"`(\w+)` \(default `?([^`)]+)`?\)", section):
            field = fields.get(key)
            if field is None or field.default != yaml.safe_load(stated):
                actual = "none" if field is None else repr(field.default)
                problems.append(f"{name}.{key}: the guide says {stated}, the code {actual}")
    assert checked >= 10
    assert not problems, problems


def test_readme_snippets_come_after_the_index_their_config_reads() -> None:
    """A README code block that uses an example config whose retriever reads a store
    comes after the `ctxproto index` command that builds that store: the chatbot
    session snippet, run as written, failed with "no store at .ctxproto/knowledge-index"."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    problems, checked = [], 0
    for block in re.finditer(r"^```\w*\n(.*?)^```", text, flags=re.M | re.S):
        for config in sorted(set(re.findall(r"examples/pipelines/\w+\.yaml", block.group(1)))):
            stages = yaml.safe_load((ROOT / config).read_text(encoding="utf-8"))["stages"]
            for stage in stages:
                if stage["type"] != "retriever":
                    continue
                checked += 1
                store = stage["init_parameters"]["store"]
                built = rf"ctxproto index \S+ --store {re.escape(store)}"
                if not re.search(built, text[: block.start()]):
                    problems.append(f"{config} reads {store}, not built before it is used")
    assert checked >= 1
    assert not problems, problems


def test_mcp_client_configs_in_the_guides_start_no_example_config() -> None:
    """A desktop client starts `ctxproto mcp` in a folder of its own (Claude Desktop on
    macOS: `/`), where the example configs' relative store paths cannot be created, so
    the server exited at once: the guides hand clients a config of the user's own."""
    import json

    named = []
    for path in GUIDES:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"^```json\n(.*?)^```", text, flags=re.M | re.S):
            if '"mcpServers"' not in block:
                continue  # other JSON: requests, JSONL lines
            for server in json.loads(block)["mcpServers"].values():
                args = server.get("args", [])
                if args[:1] == ["mcp"]:
                    named.append((path.name, args[1]))
    assert named
    examples = [(guide, config) for guide, config in named if "examples/" in config]
    assert not examples, examples
