"""Pure helpers over a pipeline definition's JSON: its hash and its step graph."""

import hashlib
import json


def definition_sha256(definition: str) -> str:
    return hashlib.sha256(definition.encode()).hexdigest()


def step_graph_mermaid(definition: str) -> str:
    """The step graph as a mermaid diagram: data edges from Get references, and condition branches."""
    doc = json.loads(definition)
    lines = ["graph LR"]
    for step in _all_steps(doc["Steps"]):
        node = _mermaid_id(step["Name"])
        arguments = dict(step.get("Arguments", {}))
        branches = {b: arguments.pop(b, []) for b in ("IfSteps", "ElseSteps")}
        lines.append(f'    {node}["{step["Name"]}<br/>{step["Type"]}"]')
        for dep in sorted(_referenced_steps(arguments) | set(step.get("DependsOn", []))):
            lines.append(f"    {_mermaid_id(dep)} --> {node}")
        for branch, label in (("IfSteps", "true"), ("ElseSteps", "false")):
            for target in branches[branch]:
                lines.append(f"    {node} -- {label} --> {_mermaid_id(target['Name'])}")
    return "\n".join(lines)


def _mermaid_id(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _all_steps(steps: list[dict]) -> list[dict]:
    out = []
    for step in steps:
        out.append(step)
        if step["Type"] == "Condition":
            out += _all_steps(step["Arguments"].get("IfSteps", []) + step["Arguments"].get("ElseSteps", []))
    return out


def _referenced_steps(node) -> set[str]:
    if isinstance(node, dict):
        found = set()
        get = node.get("Get")
        if isinstance(get, str) and get.startswith("Steps."):
            found.add(get.split(".")[1])
        step_name = node.get("Std:JsonGet", {}).get("PropertyFile", {}).get("Get", "") if "Std:JsonGet" in node else ""
        if step_name.startswith("Steps."):
            found.add(step_name.split(".")[1])
        for value in node.values():
            found |= _referenced_steps(value)
        return found
    if isinstance(node, list):
        return set().union(*(_referenced_steps(v) for v in node)) if node else set()
    return set()
