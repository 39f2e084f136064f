"""Faithfulness of rationales: their claims about the next item checked against the recommended items."""
from __future__ import annotations

import pytest

from think_rec.decoding import ThinkResult
from think_rec.decoding.claims import ClaimChecker, ClaimVocabulary, faithful, holding, rationale_claims
from think_rec.eval.reasoning import rationale_quality
from think_rec.finetune.rationales import TemplateTeacher


def item(item_id: str, title: str, brand: str, categories: list[str], price: float | None = None) -> dict:
    return {"item_id": item_id, "title": title, "brand": brand, "categories": categories, "price": price}


ITEMS = {i["item_id"]: i for i in (
    item("cal", "Mitutoyo Digital Caliper", "Mitutoyo", ["Tools", "Test", "Measure & Inspect"], 30.0),
    item("thermo", "Arex Digital Thermometer", "Arex", ["Tools", "Test", "Thermometers"], 20.0),
    item("gauge", "Arex Digital Depth Gauge", "Arex", ["Tools", "Test", "Measure & Inspect"], 25.0),
    item("rule", "Steel Rule", "Mitutoyo", ["Tools", "Test", "Measure & Inspect"], 8.0),
    item("hose", "Garden Hose", "Hoser", ["Garden", "Hoses"], 24.0),
    item("pump", "Arex Garden Pump", "Arex", ["Garden", "Pumps"], 26.0),
)}
HISTORY = ["cal", "thermo"]


def quality(text: str, ranked: list[str]) -> dict[str, float]:
    result = ThinkResult([text], [(i, -float(n)) for n, i in enumerate(ranked)])
    return rationale_quality([result], [HISTORY], ["gauge"], ITEMS)


def claims(text: str):
    return rationale_claims(text, ClaimVocabulary(ITEMS.values()), [ITEMS[i] for i in HISTORY])


@pytest.mark.parametrize(("top", "expected"), [("gauge", 1.0), ("hose", 0.0)])
def test_category_claim_holds_only_for_an_item_in_it(top, expected):
    q = quality('Like "Mitutoyo Digital Caliper", the next item is in Measure & Inspect.', [top])
    assert q["faithful@1"] == expected and q["claims"] == 1 and q["contradictions"] == 0


def test_two_categories_no_item_carries_are_a_contradiction():
    q = quality("The next item is in Measure & Inspect. The next item is in Hoses.", ["gauge"])
    assert q["contradictions"] == 1.0 and q["faithful@1"] == 0.0
    assert quality("The next item is in Test > Measure & Inspect.", ["gauge"])["contradictions"] == 0.0  # one path


def test_brand_attributed_to_a_cited_item_lacking_it_is_a_contradiction():
    bad = claims('It is made by Arex, like "Mitutoyo Digital Caliper".')
    assert bad.brands == {"Arex"} and len(bad.contradictions) == 1
    assert not claims('It is made by Arex, like "Arex Digital Thermometer".').contradictions
    assert quality('It is made by Arex, like "Mitutoyo Digital Caliper".', ["gauge"])["contradictions"] == 1.0


def test_category_attributed_to_a_cited_item_lacking_it_is_a_contradiction():
    bad = claims('Like "Arex Digital Thermometer", the next item is in Measure & Inspect.')
    assert bad.categories == {"Measure & Inspect"} and len(bad.contradictions) == 1
    assert not claims('Like "Mitutoyo Digital Caliper", the next item is in Test > Measure & Inspect.').contradictions
    checker = ClaimChecker(ITEMS)  # the page drops the sentence, keeps the rest
    text = 'Like "Arex Digital Thermometer", the next item is in Measure & Inspect. It is made by Arex.'
    assert checker.shorten(text, HISTORY, "gauge") == "It is made by Arex."


def test_about_words_attributed_to_a_cited_item_lacking_them_are_a_contradiction():
    bad = claims('It is also about pump, like "Mitutoyo Digital Caliper".')
    assert bad.words == {"pump"} and bad.contradictions == ['pump attributed to "Mitutoyo Digital Caliper"']
    assert not claims('It is also about digital, like "Mitutoyo Digital Caliper".').contradictions
    assert not claims("It is also about pump.").contradictions  # nothing cited: a claim, not an attribution
    text = 'It is also about pump, like "Mitutoyo Digital Caliper". It is made by Arex.'
    assert ClaimChecker(ITEMS).shorten(text, HISTORY, "pump") == "It is made by Arex."  # the page drops it


def test_an_inch_mark_inside_a_cited_title_does_not_end_its_quote():
    items = {**ITEMS, "sign": item("sign", 'Garden Sign 6" Hoses Marker', "Signet", ["Garden", "Signs"], 9.0)}
    text = 'They recently bought "Mitutoyo Digital Caliper" and "Garden Sign 6" Hoses Marker".'
    c = rationale_claims(text, ClaimVocabulary(items.values()), [items["cal"], items["sign"]])
    assert not c.categories and not c.contradictions and len(c) == 0  # "Hoses" is inside the title
    assert ClaimChecker(items).shorten(text, ["cal", "sign"], "hose") == text


def test_two_brands_are_a_contradiction():
    assert claims("It is made by Arex. It is made by Hoser.").contradictions


def test_faithful_at_10_is_the_share_of_items_all_claims_hold_for():
    text = "It is made by Arex. It is also about digital."  # gauge and thermo; pump lacks "digital"
    q = quality(text, ["hose", "gauge", "pump", "rule", "thermo"])
    assert q["faithful@10"] == pytest.approx(2 / 5) and q["faithful@1"] == 0.0  # gauge, thermo
    assert q["claims"] == 2


def test_price_band_against_what_the_user_usually_pays():
    c = claims("It costs more than they usually pay.")  # median of 30 and 20 is 25: more is above 37.5
    assert c.prices == {"more"} and c.usual_price == 25.0
    assert not faithful(c, ITEMS["gauge"]) and faithful(c, {**ITEMS["gauge"], "price": 40.0})
    assert not faithful(c, {**ITEMS["gauge"], "price": None})


def test_bare_like_needs_a_shared_attribute():
    c = claims('It is like "Arex Digital Thermometer".')
    assert len(c) == 1 and faithful(c, ITEMS["pump"]) and not faithful(c, ITEMS["hose"])


def test_no_claims_count_as_faithful_with_zero_claims():
    q = quality('They recently bought "Mitutoyo Digital Caliper".', ["hose"])
    assert q["faithful@1"] == q["faithful@10"] == 1.0 and q["claims"] == 0 and q["contradictions"] == 0


def test_template_rationales_are_faithful_to_their_target():
    history = [ITEMS[i] for i in HISTORY]
    text = TemplateTeacher().rationale(history, ITEMS["gauge"])
    c = rationale_claims(text, ClaimVocabulary(ITEMS.values()), history)
    assert len(c) >= 4 and not c.contradictions  # category path, brand, title word, price band
    assert faithful(c, ITEMS["gauge"]) and not faithful(c, ITEMS["cal"]) and not faithful(c, ITEMS["hose"])


def test_holding_is_the_share_of_claims_an_item_satisfies():
    c = claims("It is made by Arex. It is also about digital.")
    assert holding(c, ITEMS["gauge"]) == 1.0 and holding(c, ITEMS["pump"]) == 0.5 and holding(c, ITEMS["hose"]) == 0.0


def test_follow_reranks_by_the_claims_with_the_weight():
    checker = ClaimChecker(ITEMS)
    c = checker.claims("The next item is in Measure & Inspect.", HISTORY)
    ranked = [("hose", -1.0), ("pump", -1.5), ("gauge", -2.0), ("rule", -2.6)]
    assert checker.follow(ranked, c, 0.0, 3) == ranked[:3]  # weight 0: the ranking as it was
    assert [i for i, _ in checker.follow(ranked, c, 0.8, 3)] == ["hose", "gauge", "pump"]  # -1.2 beats -1.5
    assert [i for i, _ in checker.follow(ranked, c, 2.0, 2)] == ["gauge", "rule"]


def test_shorten_keeps_the_sentences_that_hold_for_the_top_item():
    checker = ClaimChecker(ITEMS)
    text = ('Like "Mitutoyo Digital Caliper", the next item is in Measure & Inspect. It is made by Hoser. '
            'It is also about digital.')
    kept = 'Like "Mitutoyo Digital Caliper", the next item is in Measure & Inspect. It is also about digital.'
    assert checker.shorten(text, HISTORY, "gauge") == kept
    assert checker.shorten(text, HISTORY, "hose") == "It is made by Hoser."
    assert checker.shorten("It is made by Arex, like \"Mitutoyo Digital Caliper\".", HISTORY, "gauge") == ""
    shown, items = checker.answer([text], HISTORY, [("hose", -1.0), ("gauge", -1.2)], 1.0, 2)
    assert [i for i, _ in items] == ["gauge", "hose"] and "Hoser" not in shown and "Measure & Inspect" in shown


def test_rationale_accuracy_and_shown_faithfulness():
    q = quality("The next item is in Hoses.", ["hose"])  # the target is the gauge: the claim is wrong
    assert q["rationale_accuracy"] == 0.0 and q["faithful@1"] == 1.0 and q["shortened"] == 0.0
    q = quality("The next item is in Measure & Inspect. It is made by Hoser.", ["gauge"])
    assert q["faithful@1"] == 0.0 and q["shown_faithful@1"] == 1.0 and q["shortened"] == 1.0
    assert q["rationale_accuracy"] == 0.0
    assert quality("The next item is in Measure & Inspect.", ["hose"])["rationale_accuracy"] == 1.0
    mixed = [ThinkResult(['They recently bought "Mitutoyo Digital Caliper".'], [("hose", 0.0)]),  # claims nothing
             ThinkResult(["The next item is in Hoses."], [("gauge", 0.0)]),
             ThinkResult(["The next item is in Measure & Inspect."], [("gauge", 0.0)])]
    q = rationale_quality(mixed, [HISTORY] * 3, ["gauge"] * 3, ITEMS)
    assert q["faithful@1"] == pytest.approx(2 / 3) and q["claiming"] == pytest.approx(2 / 3)
    assert q["faithful@1_claiming"] == 0.5 and q["rationale_accuracy"] == 0.5


def test_a_name_inside_a_longer_name_is_not_claimed():
    items = {**ITEMS, "pr": item("pr", "Filament Spool", "3D", ["Tools", "3D Printing Supplies"], 20.0),
             "v": item("v", "Brass Nipple", "Dixon Valve & Coupling", ["Garden", "Valves"], 9.0)}
    vocab, history = ClaimVocabulary(items.values()), [ITEMS[i] for i in HISTORY]
    c = rationale_claims('Like "Arex Digital Thermometer", the next item is in 3D Printing Supplies.', vocab, history)
    assert c.categories == {"3D Printing Supplies"} and not c.brands  # no "3D" brand attributed to the thermometer
    assert c.contradictions == ['3D Printing Supplies attributed to "Arex Digital Thermometer"']
    c = rationale_claims("The next item is in Garden. It is made by Dixon Valve & Coupling too.", vocab, history)
    assert c.categories == {"Garden"} and c.brands == {"Dixon Valve & Coupling"} and not c.contradictions


def test_choose_shows_a_drawn_rationale_that_holds_over_the_greedy_one():
    checker = ClaimChecker(ITEMS)
    ranked = [("hose", -1.0), ("gauge", -1.2)]
    contradicts = 'Like "Arex Digital Thermometer", the next item is in Measure & Inspect.'
    wrong = 'Like "Mitutoyo Digital Caliper", the next item is in Measure & Inspect.'  # clean, the hose lacks it
    holds = "The next item is in Hoses."
    assert checker.choose([contradicts, wrong, holds], HISTORY, ranked, 0.0, 2) == (2, ranked)
    assert checker.choose([contradicts, wrong], HISTORY, ranked, 0.0, 2)[0] == 1  # clean beats contradictory
    assert checker.choose([contradicts, "They bought a caliper."], HISTORY, ranked, 0.0, 2)[0] == 1
    n, items = checker.choose([contradicts, wrong], HISTORY, ranked, 1.0, 2)  # followed, the wrong one holds
    assert n == 1 and items[0][0] == "gauge"
    assert checker.choose([holds, "They bought a caliper."], HISTORY, ranked, 0.0, 2)[0] == 0  # a claim beats none
    assert checker.answer([contradicts, holds], HISTORY, ranked, 0.0, 2) == (holds, ranked)


def test_a_decade_holds_for_a_film_released_then_and_is_checked_on_its_citation():
    released = (("nutty", "Nutty Professor, The", 1996), ("santa", "Santa Clause, The", 1994),
                ("ghost", "Ghostbusters", 1984))
    films = {i: {"item_id": i, "title": t, "brand": "", "categories": ["Comedy"], "price": None,
                 "description": f"Released {y}"} for i, t, y in released}
    checker = ClaimChecker(films)
    claims = checker.claims('Like "The Nutty Professor", the next film is a Comedy film. It is from the 1980s.',
                            ["nutty"])
    assert claims.decades == {1980} and len(claims) == 2 and not claims.contradictions
    assert not faithful(claims, films["santa"]) and faithful(claims, films["ghost"])
    text = 'Like "The Nutty Professor", the next film is a Comedy film. It is from the 1980s.'
    assert checker.shorten(text, ["nutty"], "santa") == 'Like "The Nutty Professor", the next film is a Comedy film.'
    assert checker.claims('It is from the 1980s, like "The Nutty Professor".', ["nutty"]).contradictions
    assert checker.claims("It is from the 1980s. It is from the 1990s.", ["nutty"]).contradictions
