"""Fields every config has, in the reference score_sde layout (training, sampling, eval, data,
model, optim). Dataset defaults (default_*.py) and method files build on this."""
import ml_collections


def unset(kind: type) -> ml_collections.FieldReference:
    """A field that is None until set (from the command line too, as `kind`)."""
    return ml_collections.FieldReference(None, field_type=kind)


def get_base_config():
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.device = "auto"  # "auto" = cuda when available, else cpu
    # torch's intra-op CPU threads; 0 = the usable cores less those other processes keep busy,
    # reconsidered every 2 s (docs/threads.md); N = exactly N (bit-for-bit repeatable runs).
    config.threads = 0
    config.plugins = ()                   # modules that register components (sde_diffusion.app.plugins)

    config.training = training = ml_collections.ConfigDict()
    training.sde = "vpsde"
    training.continuous = True            # False: the discrete DDPM / SMLD losses
    training.reduce_mean = False
    # continuous-time objective: "dsm" (denoising score matching, Song et al. 2021), "edm" (EDM's
    # log-normal noise levels and weighting) or "flow_matching" (the path's velocity as target)
    training.loss = "dsm"
    training.likelihood_weighting = False
    training.min_snr_gamma = 0.0          # dsm: > 0 weights terms by min(SNR, gamma) / SNR (Hang et al. 2023; 5 there)
    training.time_sampling = "uniform"    # flow_matching: "uniform" or "logit_normal" t (Esser et al. 2024)
    training.batch_size = 128             # the global batch: under torchrun divided evenly over the processes
    training.n_iters = 1300001
    training.log_freq = 50
    # Without a terminal (nohup, a scheduler, `| tee`) progress is a log line every log_freq
    # steps or every progress_seconds, whichever is rarer; on a terminal a tqdm bar.
    training.progress_seconds = 30.0
    training.eval_freq = 100              # loss on a test batch
    training.snapshot_freq = 50000        # kept checkpoints (+ snapshot samples)
    training.snapshot_freq_for_preemption = 10000  # the overwritten resume checkpoint
    training.snapshot_sampling = True
    training.num_snapshot_samples = 64
    training.precision = "fp32"           # fp32, bf16 or fp16 autocast of the network (fp16 with loss scaling)
    training.channels_last = False        # NHWC layout for image batches and conv weights
    training.compile = False              # torch.compile the network for the training step
    training.nonfinite = "stop"           # a non-finite loss or gradient: "stop" the run, or "skip" the step
    training.nonfinite_max_skips = 10     # "skip": stop anyway after more than this many in a row
    training.cond_drop_prob = 0.1         # class-conditional models: P(label -> "no label")
    # Resuming a workdir: the config must be the one that started it, except the fields in
    # sde_diffusion/app/workdir_config.py MAY_CHANGE_ON_RESUME (n_iters, frequencies, threads,
    # device, precision/compile, lr, data.root, the sampling/eval/study/controllable sections);
    # True resumes despite other changes, with a warning per field (README, "What is safe").
    training.resume_despite_changes = False
    # A new run's start from a teacher: a checkpoint file or workdir of this package whose EMA
    # weights the run starts from (consistency tuning, reflow: docs/few_step.md); unread on resume.
    training.init_from = ""
    training.reflow_pairs = 50000         # training.loss=reflow: (noise, sample) pairs the teacher makes
    training.reflow_sampler = "ode rtol=1e-5 atol=1e-5 denoise=True"  # ... with this deterministic sampler

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"                # any registered sampler
    sampling.steps = 1000
    # Unset (None) means the sampler's own default, its best known setting (README, "Samplers").
    # The grid: a schedule option (rho, power) the resolved schedule does not take is an error.
    sampling.schedule = unset(str)        # uniform, quadratic, logsnr, karras
    sampling.rho = unset(float)           # karras schedule's exponent
    sampling.power = unset(float)         # logsnr schedule's warp: lambda ~ u^power, < 1 steps finer at high SNR
    sampling.eps = unset(float)           # the grid's last time, a time of the process; or:
    sampling.end_noise_level = unset(float)  # the noise level sigma/alpha there (unset: the sampler's own)
    # Sampler options: a sampler reads the fields that name its own options and ignores the
    # others by design, so a config can set up pc (its predictor, ...) and still run with
    # --config.sampling.method=ddim.
    sampling.eta = unset(float)           # ddim, dpm_solver++: 0 deterministic, 1 stochastic
    sampling.order = unset(int)           # dpm_solver++: 1, 2 or 3
    sampling.unipc = unset(bool)          # dpm_solver++: UniPC's corrector (eta = 0)
    sampling.churn = unset(float)         # heun: Karras et al.'s S_churn (EDM's generate.py --S_churn)
    sampling.churn_min = unset(float)     # heun: S_min, the lowest noise level churned (--S_min)
    sampling.churn_max = unset(float)     # heun: S_max, the highest (--S_max)
    sampling.churn_noise = unset(float)   # heun: S_noise, the added noise's inflation (--S_noise)
    sampling.predictor = unset(str)       # pc: reverse_diffusion, euler_maruyama, ancestral, none
    sampling.corrector = unset(str)       # pc: langevin, ald, none
    sampling.snr = unset(float)           # pc's corrector
    sampling.corrector_steps = unset(int)  # pc: corrector (MCMC) steps per noise level
    sampling.corrector_first = unset(bool)  # pc: the reference code's order (corrector before predictor)
    sampling.denoise = unset(bool)        # pc, ode, adaptive_sde: Tweedie's x0 at the end
    sampling.rtol = unset(float)          # ode, adaptive_sde, sde_solver (adaptive)
    sampling.atol = unset(float)
    sampling.max_nfe = unset(int)         # ode, adaptive_sde: stop (one line) past this many score evaluations
    sampling.solver = unset(str)          # ode: RK45, dopri5, ...; sde_solver: euler, milstein, srk
    sampling.num_samples = 64
    sampling.batch_size = 64
    sampling.labels = ""                  # class-conditional models: "3", "0,1,2"; ""/"all" = every class
    sampling.guidance_scale = 0.0         # classifier-free guidance w (0: plain conditional)
    sampling.seeds = ""                   # --mode sample: per-image seeds "0-63" as EDM's generate.py (app/image_seeds.py)

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.checkpoint = 0               # 0 = the latest checkpoint
    # A score_sde_pytorch checkpoint file (README, "Published score_sde checkpoints") used by
    # sample / likelihood / eval / study instead of the workdir's checkpoints; "" = none.
    evaluate.reference_checkpoint = ""
    # An EDM pickle whose stored network source is not the EDM release this package reimplements
    # is refused; True loads it anyway, by class names, arguments and tensor shapes (docs/networks.md).
    evaluate.edm_allow_unknown_source = False
    evaluate.batch_size = 64
    evaluate.num_samples = 1000
    evaluate.seeds = ()                   # eval: one sample set per seed, mean and std across them; () = (seed,)
    evaluate.bpd_num_images = 256
    evaluate.bpd_trace = "hutchinson"     # or "exact"
    evaluate.bpd_rtol = 3e-5              # likelihood: 1e-4 bits/dim from a 1e-6 solve on digits (docs/benchmarks.md)
    evaluate.bpd_atol = 3e-5
    evaluate.bpd_max_nfe = 20_000         # likelihood: stop (one line) past this many score evaluations per batch
    evaluate.inception_path = ""          # clean-fid's inception-2015-12-05.pt, for FID/KID; "" = the cache folder's
    evaluate.download_inception = False   # opt-in: "" and not in the cache folder: fetch it there once
    evaluate.fid_reference = "train"      # image FID/KID against: the whole training split's Inception statistics
                                          # (cached in <workdir>/eval), "test", or "cleanfid:NAME:SPLIT" (e.g.
                                          # cleanfid:cifar10:train, clean-fid's published statistics)

    # --mode study: sampler specs "method key=value ..." (sde_diffusion.evaluation.study) x NFE budgets.
    config.study = study = ml_collections.ConfigDict()
    study.samplers = ("pc predictor=euler_maruyama corrector=none",
                      "pc predictor=reverse_diffusion corrector=langevin",
                      "ddim schedule=quadratic",
                      "heun schedule=karras",
                      "dpm_solver++ order=2 schedule=logsnr",
                      "dpm_solver++ order=3 schedule=logsnr",
                      "dpm_solver++ order=3 unipc=true schedule=logsnr power=0.65",
                      "dpm_solver++ order=2 eta=1 schedule=logsnr power=0.5",
                      "ode solver=RK45 rtol=1e-3 atol=1e-3")
    study.nfe = (10, 20, 50, 100)
    study.num_samples = 1000
    study.reference_tol = 1e-5            # the probability-flow ODE deterministic samplers are compared to
    study.reference = True                # False: skip that ODE solve (often longer than the grid; no ode_* columns)
    study.oracle = False                  # the exact score instead of a checkpoint (data.dataset=gmm)

    # --mode inpaint / colorize (sde_diffusion.app.controllable_modes): the pc sampler of sampling.*.
    config.controllable = controllable = ml_collections.ConfigDict()
    controllable.images = ""              # .npz (key x or first array) or folder of PNGs; "" = test split
    controllable.num_images = 64          # the first ones of controllable.images
    controllable.mask = "half_right"      # inpaint: the hole, half_left/right/top/bottom, center_square,
                                          # random_pixels:p; or an .npz/.png file, 1 = kept pixel
    controllable.conditioning = "replacement"  # replacement (one chain per image, approximate) or smc
                                          # (SMCDiff particle filter, exact as particles and steps grow)
    controllable.particles = 16           # smc: chains per image; sampling.batch_size counts chains

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "cifar10"              # also "folder" (your images) or "npz" (an array file)
    data.root = ""                        # folder holding mnist / cifar10 files, the image folder, or the .npz
    data.labels_from = ""                 # folder: "subfolders" = each first-level subfolder is a class
    data.download = False                 # explicit opt-in to fetch through torchvision
    data.image_size = 32
    data.num_channels = 3
    data.centered = False
    data.random_flip = True
    data.uniform_dequantization = False
    data.num_points = 10000               # toy sets

    config.model = model = ml_collections.ConfigDict()
    model.name = "ddpm"
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.num_classes = 0                 # > 0: class-conditional (must match the data set's classes)
    # Discrete DDPM networks (vpsde, continuous=False) at a time t: "noise_level" feeds the
    # fractional chain step whose noise level is the SDE's at t; "reference" feeds t (N - 1) and
    # divides by the std of step floor(t (N - 1)), as score_sde does (its samples exactly).
    model.discrete_labels = "noise_level"
    # What the network outputs: "" = the SDE's default (noise for VP-like, score for VE/EDM), or
    # score, noise, data, v, velocity, edm (EDM's preconditioning around the network).
    model.parameterization = ""

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0
    return config
