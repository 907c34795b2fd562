"""facekit: reconstruct recognisable faces from low-quality CCTV footage, CPU-first.

Modules (one concern each):
    settings   threads, paths
    errors     the exception types users see
    imageio    robust image reading to 8-bit RGB
    faces      YuNet detection, five-point alignment, cropping
    data       data sources, manifests, splits, caches
    degrade    CCTV degradations (blur, resize, noise, compression, occlusion, low light)
    augment    lighting conditions and head-angle augmentation
    dataset    paired (lq, gt) torch datasets
    archs      model registry (generators, discriminators)
    losses     pixel, adversarial, gradient-penalty losses
    train      CPU-first GAN training loop
    metrics    PSNR, SSIM and friends
    runner     headless notebook runner and HTML reports
"""

__version__ = "0.1.0"
