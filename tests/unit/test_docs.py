"""The docs document every setting and port, CI runs the README's test command, and every document is
reachable from the README with links that resolve."""

import re
from pathlib import Path

from api.app import create_app
from events.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    table = OPERATIONS.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert not missing, f"settings missing from the README: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^make (\w+)$", ci, re.M).group(1)
    assert f"make {command}" in README.split("## Two commands", 1)[1].split("\n## ", 1)[0]


def resolve(spec: dict, schema: dict) -> list[dict]:
    """The schemas a response's schema stands for (a $ref, or each member of anyOf)."""
    if "$ref" in schema:
        return [spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]]
    return [member for part in schema.get("anyOf", []) for member in resolve(spec, part)]


def test_every_endpoint_is_documented_with_an_example_of_its_answer() -> None:
    """The API documents itself: GET /openapi.json holds, for each endpoint, a summary and an example of
    each success answer (and each error is a Problem with a message)."""
    spec = create_app().openapi()
    assert len(spec["paths"]) >= 11
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("description") or operation.get("summary"), where
            for code, answer in operation["responses"].items():
                if code == "204":
                    assert answer["description"], where
                    continue
                for media, content in answer.get("content", {}).items():
                    if code.startswith("2"):
                        schemas = resolve(spec, content.get("schema", {}))
                        assert "example" in content or (schemas and all("examples" in s for s in schemas)), (
                            where,
                            media,
                        )
                    elif code != "422" or path.endswith("{event_id}"):
                        assert content["schema"]["$ref"].endswith(("/Problem", "/HTTPValidationError")), (where, code)
    request = spec["components"]["schemas"]["VideoRequest"]
    assert request["examples"][0]["object"]


def test_the_port_table_is_the_port_plan() -> None:
    from events.ports import DEFAULT

    table = OPERATIONS.split("### The port plan", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| [^|]+ \| (\d+) \| `--([a-z0-9-]+)-port` \|$", table, re.M)
    assert {name: int(port) for port, name in rows} == DEFAULT.ports()


def test_every_document_is_linked_from_the_readme_and_every_link_resolves() -> None:
    documents = sorted((ROOT / "docs").glob("*.md"))
    assert documents and all(f"](docs/{doc.name})" in README for doc in documents)
    for page in [ROOT / "README.md", *documents]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
