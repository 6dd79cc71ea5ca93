"""The algorithms (one package each: `rl2`, `maml`, `adversarial`), what their samplers share,
the learner actor and the parameter server. The contract they implement is `metaray.core`."""
