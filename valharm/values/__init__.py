"""Values: Schwartz's ten basic values and their distributions (extremes, ESS profiles, the study's 154), PVQ
scoring and NMSE (`distributions`); the 1-6 rating question that VIM stage 2 and PVQ-40 share (`questionnaire`);
whether an alignment took (`alignment`) and the validation's levels (`validation`).

May import `valharm.generation`, `valharm.models`, `valharm.data` (its file reader and samples), `valharm.errors`
and `valharm.caching`; nothing above.
"""
