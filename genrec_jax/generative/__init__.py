"""Generative recommenders on semantic IDs: one core, three prompt formats.

  formats.py      PromptFormat (model, batches, prompts, scorer, model.json)
                  and its registry; tiger.py, sid_decoder.py, text_decoder.py
  sid_data.py     next-item examples on SID tokens (TIGER and "sid")
  text_data.py    MiniOneRec's text SFT examples; prompts.py their templates
  hints.py        miniGR-CF collaborative hints (clean target, K shown)
  losses.py       T5 / decoder losses, sequence log-probs
  ranker.py       GenerativeRanker (constrained search), model folders
  stage.py        the train_generative stage
"""
