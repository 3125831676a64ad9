from kedro.pipeline import Pipeline, node, pipeline

from .nodes import clean_and_filter, extract_pairs, split_rows


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline([
        node(extract_pairs, ["raw_rows", "params:data_processing"],
             ["extracted_pairs", "extract_report"], name="extract_pairs"),
        node(clean_and_filter, ["extracted_pairs", "extract_report", "params:data_processing"],
             ["clean_pairs", "clean_report"], name="clean_and_filter"),
        node(split_rows, ["clean_pairs", "clean_report", "params:data_processing"],
             ["train_set", "validation_set", "test_set", "data_report"], name="split_rows"),
    ])
