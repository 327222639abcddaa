"""The SegFace demo Space: model choices and loading (`models`), parsing and pictures (`inference`), the page (`ui`)."""
