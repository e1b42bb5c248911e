"""The pipeline definition language: parsing, step order, expressions and conditions.

Pure functions over the definition JSON the SDK produces (``Version 2020-12-01``). Nothing here
touches the database or starts a process; the worker supplies a ``Scope`` with what expressions
read (parameters, execution variables, properties of steps that ran, objects in the store).

Supported: ``Get`` of ``Parameters.*``, ``Execution.*`` and ``Steps.<step>.<property path>``;
``Std:Join``; ``Std:JsonGet`` over a PropertyFile or an S3Uri; conditions Equals, GreaterThan,
GreaterThanOrEqualTo, LessThan, LessThanOrEqualTo, In, Not, Or; step types Processing, Training,
Condition, RegisterModel, Fail, Model and Transform (model_steps.py). Anything else is reported by ``Plan.unsupported`` before a step
runs, naming the construct and the step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import step_cache

SUPPORTED_STEP_TYPES = ("Processing", "Training", "Condition", "RegisterModel", "Fail", "Model", "Transform")
PARAMETER_TYPES = ("String", "Integer", "Float", "Boolean")
EXECUTION_VARIABLES = (
    "PipelineExecutionId",
    "PipelineExecutionArn",
    "PipelineName",
    "PipelineArn",
    "StartDateTime",
    "CurrentDateTime",
    "TrainingJobName",
    "ProcessingJobName",
)
COMPARISONS = ("Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo")
CONDITION_TYPES = (*COMPARISONS, "In", "Not", "Or")
FUNCTIONS = ("Std:Join", "Std:JsonGet")
BRANCHES = ("IfSteps", "ElseSteps")

# One token of a property path: .Name, [0], ['key'] or ["key"].
_PATH_TOKEN = re.compile(r"""\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['([^']*)'\]|\["([^"]*)"\]""")
# JSON keys may hold any character but '.' and brackets.
_JSON_TOKEN = re.compile(r"""\.([^.\[\]]+)|\[(\d+)\]|\['([^']*)'\]|\["([^"]*)"\]""")
# Keys SageMaker matches a ['name'] selector against, in list elements.
_SELECTOR_KEYS = ("OutputName", "ChannelName", "Name", "InputName", "PropertyFileName", "MetricName")


class DefinitionError(ValueError):
    """The definition is malformed (bad JSON, duplicate or unknown step names, a cycle)."""


class ExpressionError(ValueError):
    """An expression could not be evaluated (missing property, bad JSON path, type mismatch)."""


class Unsupported(ExpressionError):
    """A construct the local service does not implement."""


# --- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Any = None


@dataclass
class StepDef:
    name: str
    type: str
    arguments: dict
    depends_on: set[str] = field(default_factory=set)
    property_files: list[dict] = field(default_factory=list)
    # (condition step, "IfSteps" | "ElseSteps") for steps inside a condition's branch.
    branch: tuple[str, str] | None = None
    index: int = 0
    cache_config: Any = None  # the step's CacheConfig (step_cache.py)

    @property
    def expressions(self) -> Any:
        """The part of the step that holds expressions (a Condition's branches are steps, not values)."""
        if self.type == "Condition":
            return {k: v for k, v in self.arguments.items() if k not in BRANCHES}
        return self.arguments


@dataclass
class Plan:
    """A parsed definition: its parameters, every step (branches flattened) and the run order."""

    parameters: dict[str, Parameter]
    steps: dict[str, StepDef]
    order: list[str]

    @classmethod
    def parse(cls, text: str) -> Plan:
        try:
            doc = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise DefinitionError(f"the pipeline definition is not valid JSON: {err}") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("Steps"), list):
            raise DefinitionError("the pipeline definition has no 'Steps' list")
        parameters = _parse_parameters(doc.get("Parameters") or [])
        steps: dict[str, StepDef] = {}
        _collect_steps(doc["Steps"], steps, branch=None)
        for step in steps.values():
            step.depends_on |= _dependencies(step, steps)
        return cls(parameters=parameters, steps=steps, order=_topological(steps))

    def unsupported(self) -> str | None:
        """The first construct the local service cannot run, as a sentence naming it and its step."""
        for name in self.order:
            step = self.steps[name]
            if step.type not in SUPPORTED_STEP_TYPES:
                return f"step '{name}' has type '{step.type}', which the local SageMaker service does not run"
            try:
                step_cache.window_seconds(step.type, step.cache_config)
            except step_cache.CacheConfigError as err:
                return f"step '{name}': {err}"
            try:
                check_expressions(step.expressions, self)
                if step.type == "Condition":
                    for condition in step.arguments.get("Conditions") or []:
                        check_condition(condition, self)
            except ExpressionError as err:
                return f"step '{name}' {err}"
        return None


def _parse_parameters(raw: list) -> dict[str, Parameter]:
    parameters = {}
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("Name"), str):
            raise DefinitionError(f"pipeline parameter without a Name: {item!r}")
        kind = item.get("Type", "String")
        if kind not in PARAMETER_TYPES:
            raise DefinitionError(f"parameter '{item['Name']}' has type {kind!r}, not one of {PARAMETER_TYPES}")
        parameters[item["Name"]] = Parameter(item["Name"], kind, item.get("DefaultValue"))
    return parameters


def _collect_steps(raw: list, steps: dict[str, StepDef], branch: tuple[str, str] | None) -> None:
    for item in raw:
        if not isinstance(item, dict) or not item.get("Name") or not item.get("Type"):
            raise DefinitionError(f"a step needs a Name and a Type: {json.dumps(item)[:200]}")
        name = item["Name"]
        if name in steps:
            raise DefinitionError(f"two steps are named '{name}'")
        step = StepDef(
            name=name,
            type=item["Type"],
            arguments=item.get("Arguments") or {},
            depends_on=set(item.get("DependsOn") or []),
            property_files=list(item.get("PropertyFiles") or []),
            branch=branch,
            index=len(steps),
            cache_config=item.get("CacheConfig"),
        )
        steps[name] = step
        if step.type == "Condition":
            for key in BRANCHES:
                _collect_steps(step.arguments.get(key) or [], steps, branch=(name, key))


def _dependencies(step: StepDef, steps: dict[str, StepDef]) -> set[str]:
    deps = set(step.depends_on) | referenced_steps(step.expressions)
    if step.branch:
        deps.add(step.branch[0])
    unknown = sorted(d for d in deps if d not in steps)
    if unknown:
        raise DefinitionError(f"step '{step.name}' refers to unknown step(s) {', '.join(map(repr, unknown))}")
    if step.name in deps:
        raise DefinitionError(f"step '{step.name}' depends on itself")
    for dep in sorted(deps):
        if steps[dep].type == "Fail":
            # SageMaker's CreatePipeline answer (a Fail step ends the execution; nothing runs after it).
            raise DefinitionError(
                f"Step {step.name} can not depends on {dep}: '{dep}' is a Fail step, which ends the execution; "
                f"remove it from the DependsOn (and properties) of '{step.name}'"
            )
    return deps


def _topological(steps: dict[str, StepDef]) -> list[str]:
    """Kahn's algorithm; ties go to definition order so runs are reproducible."""
    done: list[str] = []
    remaining = dict(steps)
    while remaining:
        ready = [s for s in remaining.values() if s.depends_on <= set(done)]
        if not ready:
            cycle = ", ".join(sorted(remaining))
            raise DefinitionError(f"the steps {cycle} depend on each other in a cycle")
        first = min(ready, key=lambda s: s.index)
        done.append(first.name)
        del remaining[first.name]
    return done


def referenced_steps(node: Any) -> set[str]:
    """Names of the steps that ``Get`` expressions in ``node`` read from."""
    found: set[str] = set()
    if isinstance(node, dict):
        get = node.get("Get")
        if len(node) == 1 and isinstance(get, str) and get.startswith("Steps."):
            found.add(get.split(".")[1].split("[")[0])
        for value in node.values():
            found |= referenced_steps(value)
    elif isinstance(node, list):
        for value in node:
            found |= referenced_steps(value)
    return found


# --- parameters ------------------------------------------------------------------------------


def resolve_parameters(declared: dict[str, Parameter], given: list[dict] | None) -> dict[str, Any]:
    """Typed values of every parameter: the execution's value, else the default.

    Raises ExpressionError for an unknown name, a value that does not fit the type, or a
    parameter without default that the execution does not set.
    """
    values: dict[str, Any] = {}
    for item in given or []:
        name = item.get("Name")
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise ExpressionError(f"unknown pipeline parameter {name!r} (the pipeline declares: {known})")
        values[name] = _typed(declared[name], item.get("Value"))
    for name, parameter in declared.items():
        if name not in values:
            if parameter.default is None:
                raise ExpressionError(f"pipeline parameter {name!r} has no default and the execution sets no value")
            values[name] = _typed(parameter, parameter.default)
    return values


def _typed(parameter: Parameter, value: Any) -> Any:
    try:
        if parameter.type == "Integer":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if parameter.type == "Float":
            return float(value)
        if parameter.type == "Boolean":
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("true", "false"):
                return str(value).strip().lower() == "true"
            raise ValueError
        return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        raise ExpressionError(
            f"pipeline parameter {parameter.name!r} is of type {parameter.type}; {value!r} is not a valid value"
        ) from None


def parameter_string(value: Any) -> str:
    """How a typed parameter value is shown in ListPipelineParametersForExecution."""
    return to_text(value)


# --- expressions -----------------------------------------------------------------------------


@dataclass
class Scope:
    """What expressions read while one step's arguments are resolved."""

    plan: Plan
    parameters: dict[str, Any]
    execution: dict[str, Any]
    properties: dict[str, dict] = field(default_factory=dict)
    read_object: Callable[[str], bytes] | None = None
    _json_cache: dict[str, Any] = field(default_factory=dict)


def is_expression(node: Any) -> bool:
    return isinstance(node, dict) and len(node) == 1 and (("Get" in node) or next(iter(node)).startswith("Std:"))


def check_expressions(node: Any, plan: Plan) -> None:
    """Raise Unsupported for an expression the evaluator would not know (without evaluating)."""
    if is_expression(node):
        ((key, body),) = node.items()
        if key == "Get":
            _check_get(body, plan)
        elif key not in FUNCTIONS:
            raise Unsupported(f"uses the expression '{key}', which the local SageMaker service does not support")
        elif key == "Std:JsonGet":
            _check_json_get(body, plan)
        check_expressions(body, plan)
    elif isinstance(node, dict):
        for value in node.values():
            check_expressions(value, plan)
    elif isinstance(node, list):
        for value in node:
            check_expressions(value, plan)


def _check_get(ref: Any, plan: Plan) -> None:
    if not isinstance(ref, str):
        raise Unsupported(f"uses a Get of {ref!r}, which is not a reference string")
    root, _, rest = ref.partition(".")
    if root == "Parameters":
        if rest not in plan.parameters:
            raise Unsupported(f"reads the parameter '{rest}', which the pipeline does not declare")
    elif root == "Execution":
        if rest not in EXECUTION_VARIABLES:
            raise Unsupported(
                f"reads the execution variable '{rest}', which the local SageMaker service does not support"
            )
    elif root == "Steps":
        step, _, path = rest.partition(".")
        if step not in plan.steps:
            raise Unsupported(f"reads properties of the unknown step '{step}'")
        if path.startswith("PropertyFiles."):
            return  # only meaningful inside Std:JsonGet, which checks it
        _parse_path(path, ref)
    else:
        raise Unsupported(f"uses the reference 'Get: {ref}', which the local SageMaker service does not support")


def _check_json_get(body: Any, plan: Plan) -> None:
    if not isinstance(body, dict) or "Path" not in body or not ({"PropertyFile", "S3Uri"} & set(body)):
        raise Unsupported(f"uses Std:JsonGet without Path and PropertyFile or S3Uri: {body!r}")
    if "PropertyFile" in body:
        _property_file(body["PropertyFile"], plan)


def evaluate(node: Any, scope: Scope) -> Any:
    """The value of ``node`` with every expression in it resolved (containers are copied)."""
    if is_expression(node):
        ((key, body),) = node.items()
        if key == "Get":
            return _get(body, scope)
        if key == "Std:Join":
            return _join(body, scope)
        if key == "Std:JsonGet":
            return _json_get(body, scope)
        raise Unsupported(f"uses the expression '{key}', which the local SageMaker service does not support")
    if isinstance(node, dict):
        return {k: evaluate(v, scope) for k, v in node.items()}
    if isinstance(node, list):
        return [evaluate(v, scope) for v in node]
    return node


def _get(ref: str, scope: Scope) -> Any:
    _check_get(ref, scope.plan)
    root, _, rest = ref.partition(".")
    if root == "Parameters":
        return scope.parameters[rest]
    if root == "Execution":
        if rest not in scope.execution:
            raise ExpressionError(f"the execution variable '{rest}' has no value here (Get: {ref})")
        return scope.execution[rest]
    step, _, path = rest.partition(".")
    if path.startswith("PropertyFiles."):
        raise Unsupported(f"uses 'Get: {ref}' outside Std:JsonGet (a property file is read with Std:JsonGet)")
    if step not in scope.properties:
        raise ExpressionError(f"reads properties of step '{step}', which has not run (Get: {ref})")
    return property_lookup(scope.properties[step], path, ref)


def _tokens(path: str, pattern: re.Pattern) -> list[str | int] | None:
    """Split a path into names and indexes; None when some part does not parse."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        match = pattern.match(path, pos)
        if not match or match.end() == pos:
            return None
        name, index, single, double = match.groups()
        if index is not None:
            tokens.append(int(index))
        else:
            tokens.append(next(t for t in (name, single, double) if t is not None))
        pos = match.end()
    return tokens


def _parse_path(path: str, ref: str) -> list[str | int]:
    tokens = _tokens(path, _PATH_TOKEN)
    if tokens is None:
        raise Unsupported(f"uses the property path '{ref}', which the local SageMaker service cannot parse")
    if not tokens:
        raise Unsupported(f"uses 'Get: {ref}' without a property path")
    return tokens


def property_lookup(value: Any, path: str, ref: str) -> Any:
    """Follow a property path (``A.B['key'][0].C``) through a Describe* response.

    A ``['key']`` on a list picks the element whose OutputName/ChannelName/Name... is ``key``.
    """
    for token in _parse_path(path, ref):
        value = _step_into(value, token, ref)
    return value


def _step_into(value: Any, token: str | int, ref: str) -> Any:
    if isinstance(token, int):
        if isinstance(value, list) and -len(value) <= token < len(value):
            return value[token]
        raise ExpressionError(f"index [{token}] is out of range in '{ref}'")
    if isinstance(value, dict) and token in value:
        return value[token]
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and any(item.get(k) == token for k in _SELECTOR_KEYS):
                return item
        raise ExpressionError(f"no element named '{token}' in the list at '{ref}'")
    raise ExpressionError(f"the property '{token}' does not exist in '{ref}'")


def _join(body: Any, scope: Scope) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("Values"), list):
        raise ExpressionError(f"Std:Join needs a 'Values' list: {body!r}")
    on = evaluate(body.get("On", ""), scope)
    return to_text(on).join(to_text(evaluate(v, scope)) for v in body["Values"])


def to_text(value: Any) -> str:
    """How a value appears inside a string (Std:Join, parameter listings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return "null"
    return str(value)


def _property_file(ref: Any, plan: Plan) -> tuple[StepDef, dict]:
    get = ref.get("Get") if isinstance(ref, dict) else None
    if not isinstance(get, str) or not get.startswith("Steps.") or ".PropertyFiles." not in get:
        raise Unsupported(f"uses Std:JsonGet with PropertyFile {ref!r}, not a Get of Steps.<step>.PropertyFiles.<name>")
    step_name, _, name = get.removeprefix("Steps.").partition(".PropertyFiles.")
    step = plan.steps.get(step_name)
    if step is None:
        raise Unsupported(f"reads the property file '{name}' of the unknown step '{step_name}'")
    for item in step.property_files:
        if item.get("PropertyFileName") == name:
            if step.type != "Processing":
                raise Unsupported(
                    f"reads the property file '{name}' of the {step.type} step '{step_name}'; "
                    "the local SageMaker service reads property files of Processing steps"
                )
            return step, item
    raise Unsupported(f"reads the property file '{name}', which step '{step_name}' does not declare")


def _json_get(body: dict, scope: Scope) -> Any:
    _check_json_get(body, scope.plan)
    if "PropertyFile" in body:
        step, spec = _property_file(body["PropertyFile"], scope.plan)
        if step.name not in scope.properties:
            raise ExpressionError(f"reads the property file of step '{step.name}', which has not run")
        outputs = scope.properties[step.name].get("ProcessingOutputConfig", {}).get("Outputs", [])
        output = next((o for o in outputs if o.get("OutputName") == spec.get("OutputName")), None)
        if output is None:
            raise ExpressionError(
                f"property file '{spec['PropertyFileName']}' names output '{spec.get('OutputName')}', "
                f"which step '{step.name}' does not have"
            )
        uri = output["S3Output"]["S3Uri"].rstrip("/") + "/" + spec["FilePath"].lstrip("/")
        where = f"property file '{spec['PropertyFileName']}' of step '{step.name}' ({uri})"
    else:
        uri = to_text(evaluate(body["S3Uri"], scope))
        where = uri
    document = _read_json(uri, where, scope)
    return json_path(document, str(body["Path"]), where)


def _read_json(uri: str, where: str, scope: Scope) -> Any:
    if uri not in scope._json_cache:
        if scope.read_object is None:
            raise ExpressionError(f"cannot read {where}: no object store")
        try:
            data = scope.read_object(uri)
        except Exception as err:  # not found, a bad URI, a store error: the step fails saying which object
            raise ExpressionError(f"cannot read {where}: {err}") from err
        try:
            scope._json_cache[uri] = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ExpressionError(f"{where} is not JSON: {err}") from err
    return scope._json_cache[uri]


def json_path(document: Any, path: str, where: str) -> Any:
    """Evaluate a JsonGet path (``a.b[0].c``, optionally starting with ``$``) in a JSON document."""
    expr = path.strip().removeprefix("$")
    if expr and not expr.startswith((".", "[")):
        expr = "." + expr
    tokens = _tokens(expr, _JSON_TOKEN)
    if not tokens:
        raise ExpressionError(f"cannot parse the JSON path '{path}' (for {where})")
    value = document
    for token in tokens:
        if isinstance(token, int):
            found = isinstance(value, list) and -len(value) <= token < len(value)
        else:
            found = isinstance(value, dict) and token in value
        if not found:
            raise ExpressionError(f"the JSON path '{path}' does not exist in {where}")
        value = value[token]
    return value


# --- conditions ------------------------------------------------------------------------------


def check_condition(condition: Any, plan: Plan) -> None:
    if not isinstance(condition, dict) or condition.get("Type") not in CONDITION_TYPES:
        kind = condition.get("Type") if isinstance(condition, dict) else condition
        raise Unsupported(f"uses the condition type {kind!r}, which the local SageMaker service does not support")
    kind = condition["Type"]
    if kind == "Not":
        check_condition(condition.get("Condition") or condition.get("Expression"), plan)
    elif kind == "Or":
        for inner in condition.get("Conditions") or []:
            check_condition(inner, plan)
    else:
        check_expressions(condition, plan)


def evaluate_conditions(conditions: list, scope: Scope) -> bool:
    """A ConditionStep's Conditions are ANDed."""
    return all(evaluate_condition(c, scope) for c in conditions)


def evaluate_condition(condition: dict, scope: Scope) -> bool:
    check_condition(condition, scope.plan)
    kind = condition["Type"]
    if kind == "Not":
        return not evaluate_condition(condition.get("Condition") or condition.get("Expression"), scope)
    if kind == "Or":
        return any(evaluate_condition(c, scope) for c in condition.get("Conditions") or [])
    if kind == "In":
        query = evaluate(condition.get("QueryValue"), scope)
        return any(_equal(query, evaluate(v, scope)) for v in condition.get("Values") or [])
    left = evaluate(condition.get("LeftValue"), scope)
    right = evaluate(condition.get("RightValue"), scope)
    if kind == "Equals":
        return _equal(left, right)
    a, b = _comparable(left, right, kind)
    return {
        "GreaterThan": a > b,
        "GreaterThanOrEqualTo": a >= b,
        "LessThan": a < b,
        "LessThanOrEqualTo": a <= b,
    }[kind]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    # A number read from JSON and a Float parameter compare by value (1 == 1.0 == "1").
    if _is_number(left) or _is_number(right):
        a, b = _number(left), _number(right)
        if a is not None and b is not None:
            return a == b
    return left == right


def _comparable(left: Any, right: Any, kind: str) -> tuple[Any, Any]:
    a, b = _number(left), _number(right)
    if a is not None and b is not None and not (isinstance(left, str) and isinstance(right, str)):
        return a, b
    if isinstance(left, str) and isinstance(right, str):
        return left, right
    raise ExpressionError(f"condition {kind} cannot compare {left!r} with {right!r}")
