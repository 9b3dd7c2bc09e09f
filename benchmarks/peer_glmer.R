# R lme4 glmer peer for the hierarchical model with the item term (issue #24).
#
# Fits glmer(cbind(refusals, n - refusals) ~ task + prompt + (1|model) + (1|persona) +
#            (1|persona:model) + (1|item_id), family = binomial, nAGQ = <nAGQ>)
# to a counts CSV written by bench_hierarchical.py --glmer (one line per (item, task, prompt,
# model, persona) pattern: columns item_id, task, prompt, model, persona, n, refusals), with
# the paper's reference levels (task nli, prompt p1). The binomial likelihood on counts equals
# the row-level Bernoulli one up to a constant, so the fit is glmer's on the rows.
# Prints the wall and CPU time of the glmer call alone (reading excluded) and writes fixed effects,
# their standard errors and the random-effect sd's to <out.csv>.
#
# Run: Rscript benchmarks/peer_glmer.R counts.csv out.csv [nAGQ]
suppressMessages({library(lme4); library(data.table)})
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]
out <- args[2]
nagq <- if (length(args) >= 3) as.integer(args[3]) else 0L
t_read <- system.time(d <- as.data.frame(fread(path)))[["elapsed"]]
ref <- c(prompt = "p1", task = "nli")
for (v in c("task", "prompt")) {
  lv <- sort(unique(d[[v]]))
  d[[v]] <- factor(d[[v]], levels = c(ref[[v]], setdiff(lv, ref[[v]])))
}
for (v in c("model", "persona", "item_id")) d[[v]] <- factor(d[[v]])
f <- cbind(refusals, n - refusals) ~ task + prompt + (1 | model) + (1 | persona) +
  (1 | persona:model) + (1 | item_id)
tm <- system.time(fit <- glmer(f, data = d, family = binomial, nAGQ = nagq))
t_fit <- tm[["elapsed"]]
cpu_fit <- tm[["user.self"]] + tm[["sys.self"]]  # CPU seconds: comparable on a loaded machine
vc <- as.data.frame(VarCorr(fit))
fe <- fixef(fit)
se <- sqrt(diag(as.matrix(vcov(fit))))
res <- rbind(data.frame(term = names(fe), estimate = unname(fe), std_error = unname(se)),
             data.frame(term = paste0("sd(", vc$grp, ")"), estimate = vc$sdcor, std_error = NA))
res$glmer_s <- t_fit
res$glmer_cpu_s <- cpu_fit
res$load_1min <- tryCatch(as.numeric(strsplit(readLines("/proc/loadavg"), " ")[[1]][1]), error = function(e) NA)
res$read_s <- t_read
res$lines <- nrow(d)
res$rows <- sum(d$n)
res$nAGQ <- nagq
res$lme4 <- as.character(packageVersion("lme4"))
res$R <- R.version.string
write.csv(res, out, row.names = FALSE)
cat(sprintf("%s; lme4 %s; %d count lines, %d rows; read %.1f s; glmer(nAGQ=%d) %.1f s wall, %.1f s CPU\n",
            R.version.string, packageVersion("lme4"), nrow(d), sum(d$n), t_read, nagq, t_fit, cpu_fit))
print(res[, c("term", "estimate", "std_error")], row.names = FALSE)
