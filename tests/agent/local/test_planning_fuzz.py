"""The planning entry points of ``run`` and ``check`` (reading documents, decoding
templates, parameters, path-mapping rules and task choices, laying out the session)
raise only ``TemplateError`` on any input: never a traceback (issue 19)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.local._localrun import LocalRunOptions, plan_local_session
from agent.local._templates import TemplateError, load_any_template

VALID: dict[str, Any] = {
    "specificationVersion": "jobtemplate-2023-09",
    "name": "fuzz",
    "extensions": ["TASK_CHUNKING"],
    "parameterDefinitions": [
        {"name": "Frames", "type": "STRING", "default": "1-3"},
        {"name": "Size", "type": "INT", "default": 2, "minValue": 1},
    ],
    "jobEnvironments": [
        {
            "name": "Env",
            "variables": {"A": "1"},
            "script": {"actions": {"onEnter": {"command": "true"}}},
        }
    ],
    "steps": [
        {
            "name": "S",
            "parameterSpace": {
                "taskParameterDefinitions": [
                    {"name": "F", "type": "INT", "range": "{{Param.Frames}}"},
                    {"name": "C", "type": "STRING", "range": ["a", "b"]},
                ],
                "combination": "F * C",
            },
            "script": {"actions": {"onRun": {"command": "echo", "args": ["{{Task.Param.F}}"]}}},
        },
        {
            "name": "T",
            "dependencies": [{"dependsOn": "S"}],
            "script": {"actions": {"onRun": {"command": "true"}}},
        },
    ],
}

ENVIRONMENT: dict[str, Any] = {
    "specificationVersion": "environment-2023-09",
    "environment": {"name": "Outer", "script": {"actions": {"onEnter": {"command": "true"}}}},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1-3", "TASK_CHUNKING", "{{Param.Frames}}", "INT", "S", "", "\0"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """``base`` with a few subtrees replaced by arbitrary JSON values."""
    document = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        replacement = draw(values)
        if not path:
            document = replacement
            if not isinstance(document, dict):
                break
            continue
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = replacement
    return document


texts = st.one_of(
    st.text(max_size=40),
    st.builds(json.dumps, values),
    st.sampled_from(
        [
            "[" * 100_000 + "]" * 100_000,
            '{"a": ' * 50_000 + "1" + "}" * 50_000,
            "a: &a [*a]",
            "extensions: [[], [null]]",
            "version: pathmapping-1.0\npath_mapping_rules: [{source_path_format: POSIX}]",
        ]
    ),
)


@st.composite
def run_inputs(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "template": draw(st.one_of(mutated(VALID), texts, st.binary(max_size=40))),
        "environment": draw(st.none() | mutated(ENVIRONMENT) | st.binary(max_size=20)),
        "parameters": draw(
            st.lists(
                st.one_of(
                    st.sampled_from(["Frames=1-2", "Size=3", "Size=x", "Frames=", "Nope=1"]),
                    st.builds(lambda v: "Size=" + str(v), values),
                    st.builds(json.dumps, values),
                    st.just("file://PARAMS"),
                ),
                max_size=3,
            )
        ),
        "parameter_file": draw(st.one_of(texts, st.binary(max_size=20))),
        "rules": draw(st.none() | texts | st.just("file://RULES")),
        "rules_file": draw(st.one_of(texts, st.binary(max_size=20))),
        "step": draw(st.none() | st.sampled_from(["S", "T", "X"])),
        "run_dependencies": draw(st.booleans()),
        "task_params": draw(
            st.lists(st.sampled_from(["F=1", "C=a", "F=x", "F", "=1", "G=2"]), max_size=3)
        ),
        "tasks": draw(st.none() | texts | st.just("file://TASKS")),
        "tasks_file": draw(st.one_of(texts, st.binary(max_size=20))),
        "maximum_tasks": draw(st.none() | st.integers(min_value=-5, max_value=10**30)),
    }


def _write(path: Path, content: Any) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(run_inputs())
def test_planning_raises_only_template_errors(inputs: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        template = root / "job.yaml"
        _write(template, inputs["template"])
        environments = []
        if inputs["environment"] is not None:
            environments.append(root / "env.yaml")
            _write(environments[0], inputs["environment"])
        for name, key in (("params.yaml", "parameter_file"), ("rules.yaml", "rules_file")):
            _write(root / name, inputs[key])
        _write(root / "tasks.yaml", inputs["tasks_file"])

        def located(text: str | None) -> str | None:
            if text is None:
                return None
            return (
                text.replace("file://PARAMS", f"file://{root / 'params.yaml'}")
                .replace("file://RULES", f"file://{root / 'rules.yaml'}")
                .replace("file://TASKS", f"file://{root / 'tasks.yaml'}")
            )

        options = LocalRunOptions(
            template=template,
            parameters=[located(p) or "" for p in inputs["parameters"]],
            step=inputs["step"],
            run_dependencies=inputs["run_dependencies"],
            environments=environments,
            path_mapping_rules=located(inputs["rules"]),
            task_params=inputs["task_params"],
            tasks=located(inputs["tasks"]),
            maximum_tasks=inputs["maximum_tasks"],
        )
        try:
            load_any_template(template)
        except TemplateError:
            pass
        message = ""
        try:
            plan_local_session(options)
        except TemplateError as exc:
            message = str(exc)
        assert "\n" not in message
