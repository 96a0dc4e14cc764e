"""Screening rules: what in a tool, resource or prompt definition speaks to the model
instead of describing the tool.

Each rule has an id, a severity and a category; a rule matches text (a regular expression
over one field) or a name. The categories follow the attacks seen on MCP servers: hidden
instructions, concealment from the user, cross-server shadowing, requests for secrets,
exfiltration shapes, invisible and bidirectional Unicode, homoglyph names and side-channel
parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Severity = Literal["low", "medium", "high"]
SEVERITY_RANK: dict[str, int] = {"low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True)
class TextRule:
    id: str
    category: str
    severity: Severity
    pattern: re.Pattern[str]
    summary: str
    # lower-case substrings one of which every match contains: a text with none is skipped
    # without running the expression (most definitions, and a regex costs 10-100x more)
    triggers: tuple[str, ...] = ()


def _re(p: str) -> re.Pattern[str]:
    return re.compile(p, re.IGNORECASE | re.DOTALL)


_SECRET_PATHS = (
    r"~?/?\.ssh\b|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\.aws/credentials|/etc/(?:passwd|shadow)\b|\.npmrc\b|\.netrc\b"
    r"|\.pgpass\b|\.git-credentials\b|\.docker/config\.json|claude_desktop_config\.json|\bmcp\.json\b"
    r"|\.kube/config|(?<![\w.])\.env\b"
)
_CRED_WORDS = r"\b(?:api[ _-]?keys?|secret[ _-]?keys?|access[ _-]?tokens?|private[ _-]?keys?|passwords?|credentials?|seed phrase|bearer tokens?)\b"
_VERBS = r"\b(?:read|send|pass|include|provide|upload|share|attach|append|copy|extract|collect|leak|forward|post)\b"

TEXT_RULES: tuple[TextRule, ...] = (
    TextRule(
        "SP001",
        "hidden-instructions",
        "high",
        _re(r"<\s*/?\s*(?:important|system|instructions?|hidden|secret|admin|critical)\s*>"),
        "a tag addressed to the model (<IMPORTANT>, <SYSTEM>...)",
        triggers=("<",),
    ),
    TextRule(
        "SP002",
        "hidden-instructions",
        "high",
        _re(
            r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,30}\b(?:previous|prior|above|earlier|all|other|system)\b"
            r"[^.\n]{0,20}\b(?:instructions?|prompts?|rules|guidelines|messages)\b"
        ),
        "tells the model to drop its instructions",
        triggers=("instruction", "prompt", "rule", "guideline", "message"),
    ),
    TextRule(
        "SP003",
        "hidden-instructions",
        "medium",
        _re(
            r"\b(?:before|after|when(?:ever)?)\s+(?:using|calling|you (?:use|call))\s+(?:this|any|the)\b[^.\n]{0,40}"
            r"\b(?:you must|you should|always|first|make sure)\b"
            r"|\byou (?:must|should|need to) (?:always |first |also )?(?:call|read|send|include|pass|use|invoke)\b"
            r"|\bas an? (?:ai|assistant|language model|llm)\b|\bsystem prompt\b"
        ),
        "an instruction addressed to the model",
        triggers=("you ", "ai", "assistant", "language model", "llm", "system prompt"),
    ),
    TextRule(
        "SP004",
        "concealment",
        "high",
        _re(
            r"\b(?:do not|don't|never)\s+(?:tell|mention|inform|reveal|show|notify|alert)\b[^.\n]{0,30}\buser\b"
            r"|\bwithout\s+(?:telling|informing|notifying|asking|alerting)\s+the\s+user\b"
            r"|\buser\s+(?:must|should|need)\s+not\s+(?:know|see|be told|notice)\b"
            r"|\bhide\s+(?:this|it|that)\s+from\b|\bin secret\b|\bcovertly\b"
            r"|\b(?:silently|quietly|secretly)\s+(?:send|read|call|include|pass|upload|copy|add|run|execute|forward"
            r"|collect|extract|attach)(?:s|es|ed|ing)?\b"
        ),
        "asks the model to hide something from the user",
        triggers=("user", "hide", "secret", "covert", "silent", "quiet"),
    ),
    TextRule(
        "SP005",
        "shadowing",
        "high",
        _re(
            r"\b(?:instead of|rather than|override|overrides|replace|replaces)\s+(?:the\s+)?[`'\"]?[\w-]+[`'\"]?\s+tool\b"
            r"|\bwhen\s+(?:the\s+)?[`'\"]?[\w-]+[`'\"]?\s+tool\s+is\s+(?:called|used|invoked)\b"
            r"|\b(?:all|every|any)\s+(?:other\s+)?(?:tools?|servers?)\s+(?:must|should)\b"
        ),
        "changes how other tools behave (cross-server shadowing)",
        triggers=("tool", "server"),
    ),
    TextRule(
        "SP006",
        "secrets",
        "high",
        _re(_SECRET_PATHS),
        "names a credential file",
        triggers=(
            ".ssh",
            "id_",
            ".aws",
            "/etc/",
            ".npmrc",
            ".netrc",
            ".pgpass",
            ".git-cred",
            ".docker",
            "claude_desktop",
            "mcp.json",
            ".kube",
            ".env",
        ),
    ),
    TextRule(
        "SP007",
        "secrets",
        "high",
        _re(_VERBS + r"[^.\n]{0,40}" + _CRED_WORDS + "|" + _CRED_WORDS + r"[^.\n]{0,40}" + _VERBS),
        "asks for credentials to be read or passed",
        triggers=("key", "token", "password", "credential", "seed phrase"),
    ),
    TextRule(
        "SP008",
        "exfiltration",
        "high",
        _re(
            r"\b(?:send|post|upload|forward|transmit|exfiltrate|copy|mail|email)\s+(?:it|them|this|that|everything|"
            r"(?:all|the|any|each)\s[\w ]{1,30}?)\s+to\s+(?:https?://|[\w.-]+@|the\s+(?:server|endpoint|url|address)"
            r"|[\w-]+\.[a-z]{2,}\b)"
            r"|\b(?:curl|wget)\s+|\bnc\s+-|\bbase64\s+(?:-d|--decode)\b"
        ),
        "sends data somewhere",
        triggers=(" to ", "curl", "wget", "nc ", "base64"),
    ),
    TextRule(
        "SP009",
        "exfiltration",
        "low",
        _re(r"\bhttps?://[^\s\"'<>)]+"),
        "a URL in a definition",
        triggers=("http",),
    ),
    TextRule("SP010", "exfiltration", "medium", re.compile(r"[A-Za-z0-9+/]{80,}={0,2}"), "an encoded blob"),
)

# Invisible and bidirectional characters: format characters a person does not see.
INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f]"
)

# Parameter names whose only use is a side channel for the model to fill in.
SIDE_CHANNEL_NAMES = re.compile(
    r"^(?:side_?note|sidenote|notes?|context|conversation(?:_history)?|history|chat_?history|previous_?messages"
    r"|feedback|debug(?:_info)?|extra|internal|hidden|metadata|reasoning|thoughts?|secret|credentials?|token)$",
    re.IGNORECASE,
)
SIDE_CHANNEL_ASK = _re(
    r"\b(?:conversation|previous (?:messages?|instructions?)|chat history|system prompt|file contents?|contents? of"
    r"|secrets?|credentials?|passwords?|tokens?|keys?|everything you know|all (?:the )?(?:information|data))\b"
)
