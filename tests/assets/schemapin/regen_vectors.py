"""Regenerate canonicalization_vectors.json from the reference implementation (schemapin 1.3.0).

Run with the project venv: ``.venv/bin/python tests/assets/schemapin/regen_vectors.py``.
It creates the reference venv if needed (scripts/schemapin-reference.sh) and asks the
reference itself for each canonical string and hash; our tests then check our output equals it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent

# (name, wire text). Texts are JSON as a signer would send it.
INPUTS: list[tuple[str, str]] = [
    ("key_order_code_point", '{"b":1,"a":2,"B":3,"_":4,"aa":5,"a ":6}'),
    ("nested_order_array_kept", '{"z":{"y":[3,1,2],"x":{"b":true,"a":false}},"a":[{"d":1,"c":2}]}'),
    ("numeric_looking_keys", '{"10":"ten","2":"two","9":"nine","-1":"neg"}'),
    ("bmp_vs_astral_keys", '{"\\uffff":1,"\\ud83d\\ude00":2,"\\u00e9":3,"z":4}'),
    ("emoji_key_and_value", '{"\\ud83d\\udd11":"\\ud83d\\ude80 launch","k":"\\ud83c\\udf0d"}'),
    ("short_escapes", '{"s":"quote\\" backslash\\\\ nl\\n cr\\r tab\\t bs\\b ff\\f"}'),
    ("control_chars_and_del", '{"s":"\\u0001\\u001f\\u0000 and \\u007f"}'),
    ("line_separators_raw", '{"s":"a\\u2028b\\u2029c"}'),
    ("slash_and_html_not_escaped", '{"s":"</script> <b>&amp;</b> a\\/b"}'),
    ("big_integer", '{"n":123456789012345678901234567890,"m":-98765432109876543210}'),
    ("floats_repr", '{"a":1.0,"b":10.50,"c":1E2,"d":1e16,"e":1.5e-7,"f":0.1,"g":1e+300}'),
    ("negative_zero", '{"a":-0.0,"b":-0,"c":0.0,"d":0}'),
    ("int_vs_float_distinct", '{"one":1,"one_float":1.0,"one_exp":1e0}'),
    ("literals_and_empties", '{"t":true,"f":false,"n":null,"o":{},"l":[],"s":""}'),
    ("whitespace_removed", ' {\n  "b" : [ 1 , 2 ] ,\n\t"a" : { }\r\n} '),
    ("non_ascii_escapes_become_raw", '{"s":"caf\\u00e9 \\u65e5\\u672c \\u0627\\u0644"}'),
    ("denormal_and_small", '{"a":5e-324,"b":2.2250738585072014e-308,"c":123456789.123456789}'),
    (
        "tool_like",
        '{"name":"t","description":"d","inputSchema":{"type":"object","properties":{"x":{"type":"integer","default":1}}}}',
    ),
]


def main() -> int:
    subprocess.run([str(ROOT / "scripts" / "schemapin-reference.sh")], check=True, stdout=sys.stderr)
    ref_py = ROOT / ".venv-schemapin-ref" / "bin" / "python"
    ops = [{"op": "canon", "text": text} for _, text in INPUTS]
    out = subprocess.run(
        [str(ref_py), str(ROOT / "scripts" / "schemapin_ref_tool.py")],
        input=json.dumps(ops),
        capture_output=True,
        text=True,
        check=True,
    )
    results = json.loads(out.stdout)
    vectors = []
    for (name, text), res in zip(INPUTS, results, strict=True):
        assert res["ok"], (name, res)
        vectors.append(
            {
                "name": name,
                "input": text,
                "canonical": res["result"]["canonical"],
                "sha256": res["result"]["sha256"],
            }
        )
    doc = {
        "generator": "schemapin==1.3.0 SchemaPinCore (tests/assets/schemapin/regen_vectors.py)",
        "vectors": vectors,
    }
    (HERE / "canonicalization_vectors.json").write_text(
        json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    print(f"wrote {len(vectors)} vectors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
