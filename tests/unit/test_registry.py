"""Model references and version order (server/registry.py), without models."""

from __future__ import annotations

from squeezer.server.registry import ModelRef, ModelVersion, NamedModel, VersionState


def test_a_reference_is_a_name_an_alias_or_a_version() -> None:
    assert ModelRef.parse("bert") == ModelRef("bert")
    assert ModelRef.parse("bert@prod") == ModelRef("bert", alias="prod")
    assert ModelRef.parse("bert:3") == ModelRef("bert", version="3")
    assert ModelRef.parse("org-bert:0123abc") == ModelRef("org-bert", version="0123abc")
    for text in ("bert", "bert@prod", "bert:3"):
        assert str(ModelRef.parse(text)) == text


def _named(*labels: str, serving: tuple[str, ...] = ()) -> NamedModel:
    named = NamedModel("m")
    for seq, label in enumerate(labels):
        version = ModelVersion("m", label, f"/m/{label}", seq=seq)
        if label in serving:
            version.state, version.served = VersionState.READY, object()  # type: ignore[assignment]
        named.versions[label] = version
    return named


def test_numbers_compare_as_numbers_and_other_labels_by_arrival() -> None:
    newest = _named("9", "10", "2").newest()
    assert newest is not None and newest.version == "10"  # Triton's order, not the text's
    newest = _named("b", "a", "10").newest()
    assert newest is not None and newest.version == "10"  # the last to arrive
    named = _named("1", "2")
    assert named.newer(named.versions["2"], named.versions["1"])


def test_the_default_is_the_default_alias_else_the_newest_serving() -> None:
    named = _named("1", "2", "3", serving=("1", "2"))
    default = named.default()
    assert default is not None and default.version == "2"  # 3 is not serving
    named.aliases["default"] = "1"
    default = named.default()
    assert default is not None and default.version == "1"
    assert named.aliases_of("1") == ["default"] and named.aliases_of("2") == []
