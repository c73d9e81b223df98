"""Benchmarks of the scalable codec: machine task (mAP vs bpp), human quality (PSNR / MS-SSIM vs bpp), speed,
and of the streaming service: one camera end to end, many cameras against one cloud.

* :mod:`.bdrate` Bjøntegaard delta rate (VCEG-M33; pchip or cubic)
* :mod:`.detection_map` COCO-style mAP in numpy; :mod:`.detector` the YOLO detector
* :mod:`.classical` JPEG / WebP / AVIF / HEVC / AV1 / JPEG XL anchors; :mod:`.learned` our codecs as rate sweeps
* :mod:`.datasets` evaluation images and labels; :mod:`.curves` rate curves and BD-rate tables
* :mod:`.lineup` shared flags and the codecs a run compares; :mod:`.report` run metadata, JSON and plots
* :mod:`.streaming` options and cloud set-up of the service benchmarks; :mod:`.replay_edge` a light simulated
  camera; :mod:`.delivery` frames sent / detected / duplicated and latencies; :mod:`.procmon` CPU and RSS
* :mod:`.machine_task`, :mod:`.human_quality`, :mod:`.speed`, :mod:`.service`, :mod:`.scale` the benchmarks;
  :mod:`.cli` the ``bench`` command
"""
