"""Identifying model names in a real ComfyUI: the LongLive example names ``longlive_lora.pt`` while the test
server's models/loras holds the LoRA under LongLive's own name ``lora.pt`` (what users who downloaded it earlier
have). ComfyUI's validation accepts the name (the loaders' VALIDATE_INPUTS) and the run loads ``lora.pt``; a name
neither way is refused before anything runs, with the folder and both names in the message."""

from __future__ import annotations

import pytest

from . import prompts as P

pytestmark = pytest.mark.integration


def _longlive(lora_name: str) -> tuple[dict, str]:
    prompt = P.for_test_server(P.load_examples()["clipwan_longlive_lora"])
    (lora,) = P.node_ids(prompt, "ApplyCausalWanLoRA")
    assert P.ck.LORA == "lora.pt"  # the file on disk has the authors' name
    prompt[lora]["inputs"]["lora_name"] = lora_name
    return prompt, lora


def test_identifying_name_runs_on_the_authors_file(server):
    prompt, _ = _longlive("longlive_lora.pt")
    entry = server.run_prompt(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success"


def test_unknown_name_is_refused_at_validation(server):
    prompt, lora = _longlive("someone_elses_lora.pt")
    status, payload = server.request("POST", "/prompt", {"prompt": prompt, "client_id": server.client_id})
    assert status == 400
    errors = payload["node_errors"][lora]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "someone_elses_lora.pt' was not found in models/loras" in errors[0]["details"]
