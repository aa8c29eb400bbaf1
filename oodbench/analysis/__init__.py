"""The paper's analyses (Nalisnick et al. 2019, Sections 4-5), their mathematics as pure functions.

Nothing here loads a model file or a dataset: functions take tensors, `nn.Module`s and log-density
callables, so each can be checked against a brute-force reference on a tiny model. The runner
(`runner/analyze.py`) feeds them a trained run's checkpoint and images.

- `second_order`: the second-order explanation (Section 5): per-pixel variance differences, the
  CV-Glow closed form -1/(2 sigma^2) sum_c alpha_c^2 sum_{h,w} (var_q - var_p*), and the exact
  1/2 Tr{H (Sigma_q - Sigma_p*)} from Hessian-vector products.
"""
