"""Every SFT prompt template, shared by training and evaluation.

A prompt is built as a list of *segments* (strings) whose concatenation is
the prompt text. The segments are cut at SID tokens, titles and template
pieces, so a tokenizer can encode each distinct segment once and a prompt is
the concatenation of cached encodings (`text_data.SegmentEncoder`). Training
and evaluation call the same `build` function, so the train/eval prompt
mismatch of MiniOneRec (issue #65, METHODS.md 3.3 pitfall 3) cannot happen:
an evaluation prompt is the training prompt of the same history with the
answer left out and the full hint kept.

Wrapper (Alpaca style, METHODS.md 3.2; note the spaces after "request." and
after "User Input:"; `preamble=False` drops the first sentence, for budgets
where every prompt token counts):

  Below is an instruction ... completes the request. \\n\\n### Instruction:\\n
  {INSTR}\\n\\n### User Input: \\n{INPUT}\\n\\n### Response:\\n{OUTPUT}

Tasks (`TASKS`; item = the target item, history time-ordered):

  sid_history             SID history -> next SID (MiniOneRec task 1; the
                          only task that carries the miniGR-CF hint)
  title_to_sid            item title -> its SID (task 2, one direction)
  sid_to_title            item SID -> its title (task 2, other direction)
  sid_history_to_title    SID history -> next title (task 3)
  title_history_to_title  title history -> next title (task 4, one fixed
                          instruction instead of upstream's 11 with typos)
  title_history_to_sid    title history -> next SID (task 5)

Answers are `{sid}\\n` or `{title}\\n`; the data pipeline appends EOS.

Hint sentence (miniGR-CF, METHODS.md 4), inserted between the two sentences
of the sid_history input:

  The user has interacted with items {h} in chronological order. [Hint: Users
  who bought the last item often also buy: {s1}, {s2}, {s3}.] Can you ...
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

SID_HISTORY = "sid_history"
TITLE_TO_SID = "title_to_sid"
SID_TO_TITLE = "sid_to_title"
SID_HISTORY_TO_TITLE = "sid_history_to_title"
TITLE_HISTORY_TO_TITLE = "title_history_to_title"
TITLE_HISTORY_TO_SID = "title_history_to_sid"

TASKS = (SID_HISTORY, TITLE_TO_SID, SID_TO_TITLE, SID_HISTORY_TO_TITLE,
         TITLE_HISTORY_TO_TITLE, TITLE_HISTORY_TO_SID)
# Tasks whose input is a user history (the others are per item).
HISTORY_TASKS = (SID_HISTORY, SID_HISTORY_TO_TITLE, TITLE_HISTORY_TO_TITLE,
                 TITLE_HISTORY_TO_SID)
# Tasks whose history is written as SIDs / titles.
SID_HISTORY_TASKS = (SID_HISTORY, SID_HISTORY_TO_TITLE)
TITLE_HISTORY_TASKS = (TITLE_HISTORY_TO_TITLE, TITLE_HISTORY_TO_SID)
# Tasks whose answer is an SID / a title.
SID_ANSWER_TASKS = (SID_HISTORY, TITLE_TO_SID, TITLE_HISTORY_TO_SID)
TITLE_ANSWER_TASKS = (SID_TO_TITLE, SID_HISTORY_TO_TITLE,
                      TITLE_HISTORY_TO_TITLE)
# The task that carries the collaborative hint (miniGR-CF).
HINT_TASKS = (SID_HISTORY,)

# All tasks on with MiniOneRec's mix (every task at its natural size).
DEFAULT_TASKS = {t: 1.0 for t in TASKS}

PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input "
    "that provides further context. Write a response that appropriately "
    "completes the request. \n\n### Instruction:\n")
INPUT_HEADER = "\n\n### User Input: \n"
# Every prompt ends in exactly this segment (the constrained decoder checks
# that prompts end in its tokens, METHODS.md 3.3 pitfall 1).
RESPONSE_MARKER = "\n\n### Response:\n"
ANSWER_END = "\n"

INSTRUCTIONS = {
    SID_HISTORY:
        "Can you predict the next possible item that the user may expect?",
    TITLE_TO_SID: "Answer the question about item identification.",
    SID_TO_TITLE: "Answer the question about item identification.",
    SID_HISTORY_TO_TITLE:
        "Can you recommend the next item for the user based on their "
        "interaction history?",
    TITLE_HISTORY_TO_TITLE:
        "Given the titles of the {noun} the user interacted with, write the "
        "title of the next item the user may like.",
    TITLE_HISTORY_TO_SID:
        "Based on the user's historical interaction with item titles, "
        "predict the semantic ID of the next item they may expect.",
}

HINT_OPEN = " [Hint: Users who bought the last item often also buy: "
HINT_CLOSE = ".]"
SID_SEP = ", "
TITLE_OPEN = "\""
TITLE_SEP = "\", \""
TITLE_CLOSE = "\""


# What the catalogue's items are called in title-history prompts.
ITEM_NOUN = "items"


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A prompt and its answer as segments; `text` joins them."""

  prompt: tuple[str, ...]
  answer: tuple[str, ...]

  @property
  def prompt_text(self) -> str:
    return "".join(self.prompt)

  @property
  def answer_text(self) -> str:
    return "".join(self.answer)


def hint_segments(hint: Sequence[int] | None, sids: Sequence[str]
                  ) -> list[str]:
  """The hint sentence's segments ([] when there is no hint)."""
  if not hint:
    return []
  out = [HINT_OPEN]
  for i, h in enumerate(hint):
    if i:
      out.append(SID_SEP)
    out.append(sids[h])
  out.append(HINT_CLOSE)
  return out


def _sid_list(items: Sequence[int], sids: Sequence[str]) -> list[str]:
  out = []
  for i, it in enumerate(items):
    if i:
      out.append(SID_SEP)
    out.append(sids[it])
  return out


def _title_list(items: Sequence[int], titles: Sequence[str]) -> list[str]:
  out = [TITLE_OPEN]
  for i, it in enumerate(items):
    if i:
      out.append(TITLE_SEP)
    out.append(titles[it])
  out.append(TITLE_CLOSE)
  return out


def input_segments(task: str, history: Sequence[int], item: int | None, *,
                   sids: Sequence[str], titles: Sequence[str],
                   hint: Sequence[int] | None = None) -> list[str]:
  """The {INPUT} part of a prompt as segments.

  Args:
    task: one of TASKS.
    history: item ids, oldest first (history tasks; ignored otherwise).
    item: the item of an item-alignment task (ignored otherwise).
    sids: item id -> SID string (e.g. "<a_3><b_1><c_7>").
    titles: item id -> title.
    hint: neighbour item ids for the hint sentence (sid_history only); None
      or empty -> no hint sentence.

  Returns:
    The segments; "".join(...) is the input text.
  """
  if hint and task not in HINT_TASKS:
    raise ValueError(f"task {task!r} does not take a hint (only "
                     f"{HINT_TASKS})")
  if task == SID_HISTORY:
    return (["The user has interacted with items "]
            + _sid_list(history, sids) + [" in chronological order."]
            + hint_segments(hint, sids)
            + [" Can you predict the next possible item that the user may "
               "expect?"])
  if task == TITLE_TO_SID:
    return ["Which item has the title: ", titles[item], "?"]
  if task == SID_TO_TITLE:
    return ["What is the title of item \"", sids[item], "\"?"]
  if task == SID_HISTORY_TO_TITLE:
    return (["The user has sequentially interacted with items "]
            + _sid_list(history, sids)
            + [". Can you recommend the next item for him? Tell me the title "
               "of the item"])
  if task == TITLE_HISTORY_TO_TITLE:
    return ([f"The user has interacted with the following {ITEM_NOUN} "
             "before: "] + _title_list(history, titles))
  if task == TITLE_HISTORY_TO_SID:
    return ([f"The user has interacted with the following {ITEM_NOUN} in "
             "chronological order: "] + _title_list(history, titles)
            + [". Can you predict the next item the user may expect?"])
  raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")


def head_segment(task: str, preamble: bool = True) -> str:
  """Preamble + instruction + the user-input header (one segment).

  preamble=False leaves the Alpaca sentence out (33 SmolLM2 tokens of every
  prompt): the instruction starts the prompt.
  """
  if task not in INSTRUCTIONS:
    raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
  return ((PREAMBLE if preamble else "")
          + INSTRUCTIONS[task].format(noun=ITEM_NOUN) + INPUT_HEADER)


def build(task: str, history: Sequence[int], target: int | None, *,
          sids: Sequence[str], titles: Sequence[str],
          hint: Sequence[int] | None = None, preamble: bool = True
          ) -> Prompt:
  """The prompt and answer of one example (train and eval alike).

  Args:
    task: one of TASKS.
    history: item ids, oldest first (history tasks).
    target: the answer item (the next item, or the item of an alignment
      task); None -> no answer (evaluation prompts of history tasks).
    sids: item id -> SID string.
    titles: item id -> title.
    hint: hint neighbour ids (sid_history only), already cleaned/dropped by
      the caller; None -> no hint sentence.

  Returns:
    Prompt(prompt segments ending in RESPONSE_MARKER, answer segments
    `target + "\\n"`, empty when target is None).
  """
  if task not in HISTORY_TASKS and target is None:
    raise ValueError(f"task {task!r} needs the item (target)")
  item = None if task in HISTORY_TASKS else target
  prompt = ([head_segment(task, preamble)]
            + input_segments(task, history, item, sids=sids, titles=titles,
                             hint=hint)
            + [RESPONSE_MARKER])
  if target is None:
    answer = []
  elif task in SID_ANSWER_TASKS:
    answer = [sids[target], ANSWER_END]
  else:
    answer = [titles[target], ANSWER_END]
  return Prompt(tuple(prompt), tuple(answer))


def render(task: str, history: Sequence[int], target: int | None, *,
           sids: Sequence[str], titles: Sequence[str],
           hint: Sequence[int] | None = None, preamble: bool = True
           ) -> tuple[str, str]:
  """(prompt_text, answer_text) of one example; see `build`."""
  p = build(task, history, target, sids=sids, titles=titles, hint=hint,
            preamble=preamble)
  return p.prompt_text, p.answer_text
