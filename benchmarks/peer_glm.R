# R glm peer for benchmarks/README.md ("Scale"): the expert's fit on collapsed counts.
#
# Fits glm(cbind(refusals, n - refusals) ~ persona + task + prompt + model, binomial) to
# the counts table bench_scale.py writes (counts-scale-<s>.csv: one line per covariate
# pattern, columns persona, task, prompt, model, n, refusals), with the paper's
# reference levels, and prints the median wall time of --repeats fits, the time to read
# the CSV, and the coefficients (to compare with refusalstats).
#
# Run: Rscript benchmarks/peer_glm.R /tmp/refusalstats_bench_scale/counts-scale-1.csv [repeats] [coef.csv]
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]
repeats <- if (length(args) >= 2) as.integer(args[2]) else 7L
t_read <- system.time(counts <- read.csv(path, stringsAsFactors = FALSE))[["elapsed"]]
ref <- c(persona = "Atheist", prompt = "p1", task = "nli", model = "Llama2-13B")
for (v in c("persona", "task", "prompt", "model")) {
  lv <- sort(unique(counts[[v]]))
  counts[[v]] <- factor(counts[[v]], levels = c(ref[[v]], setdiff(lv, ref[[v]])))
}
f <- cbind(refusals, n - refusals) ~ persona + task + prompt + model
fit <- glm(f, family = binomial, data = counts)  # warm-up
times <- vapply(seq_len(repeats), function(i)
  system.time(glm(f, family = binomial, data = counts))[["elapsed"]], numeric(1))
cat(sprintf("R %s; %d count lines, %d rows; read.csv %.3f s; glm fit median %.3f s (min %.3f, %d repeats); iterations %d\n",
            R.version.string, nrow(counts), sum(counts$n), t_read, median(times), min(times), repeats, fit$iter))
if (length(args) >= 3) {
  write.csv(data.frame(term = names(coef(fit)), estimate = unname(coef(fit))), args[3], row.names = FALSE)
}
