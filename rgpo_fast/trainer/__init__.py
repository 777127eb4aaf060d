"""rgpo_fast.trainer: `python -m rgpo_fast.train`, module by module.

One RL step as a sample travels it (`rl_step.rl_step`; docs/trainer.md has the details):

    data_sources.PromptSampler       the step's prompts (a checkpointed shuffled order)
      |
    collect.collect                  unguided groups -> mode completion -> dynamic
      |  rollout/ (hf, vLLM)         sampling -> guidance; no mode is named there:
      |  rewards/contract.py         each is a GUIDANCE entry (guidance_modes.py):
      |  guidance_modes.py           none, rgpo (guided_round.py), ghpo, luffy
      |  algos/dynamic_sampling.py
      v
    [Sample]                         data/types.py: one response, its reward and kind
      |
    update.fill_rollout_logprobs     `is` transfers get their hinted-context log-probs
    batch.assemble_batch             advantages (algos/advantages.py), masks -> TrainBatch
    update.policy_logprobs      old / reference log-probs when needed
      |
    rl_update.rl_update              epochs x mini-batches of optimizer steps
      |  update.backward_batch       global normalisers, micro-batches, backward
      |  policy.PolicyModule         the decoder to hidden states, then the fused loss
      |  ../functional.py, ops/      log-probs and the policy loss without logits
      |  nonfinite.NonFiniteGuard    a NaN never reaches the weights
      v
    weight_sync.sync_engine          the new weights into the rollout engine
      |
    metrics.step_row, session.record / save    one metrics row, then the checkpoint

Around the steps (`train.run`): session.set_up (preflight.py checks, build.py loads the
model, run_dir.py owns the directory), session.start_fresh (warm_start.py, the baseline
evaluation.py) or session.resume (checkpoint.py), and session.finish (hf_export.py,
plots.py).
"""
