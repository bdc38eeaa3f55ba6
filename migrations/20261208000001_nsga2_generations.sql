-- NSGA-II: the generation each trial was drawn in, and each generation's parents (job ids), chosen
-- once when the generation's first trial is drawn. Kept, so every later draw of the generation and
-- a restarted coordinator breed from the same parents, as Optuna caches them in the study.
ALTER TABLE jobs ADD COLUMN generation INTEGER;
CREATE TABLE nsga2_parents (
    sweep_id INTEGER NOT NULL REFERENCES sweeps (id),
    generation INTEGER NOT NULL,
    parents TEXT NOT NULL,
    PRIMARY KEY (sweep_id, generation)
);
