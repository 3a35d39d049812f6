rule quantize:
    input:
        source="results/{study}/source",
        calibration=get_calibration_input,
    output:
        directory("results/{study}/models/{arm}"),
    params:
        arm=get_arm,
    log:
        "logs/{study}/quantize/{arm}.log",
    resources:
        gpu=is_gpu_method,
        mem_mb=32000,
        runtime=120,
    script:
        "../scripts/quantize.py"
