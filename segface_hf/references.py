"""BibTeX of the SegFace paper and of the datasets its models are trained on: one copy, for the model cards and the
dataset cards alike."""

SEGFACE_CITATION = """@inproceedings{narayan2025segface,
  title={SegFace: Face Segmentation of Long-Tail Classes},
  author={Narayan, Kartik and VS, Vibashan and Patel, Vishal M.},
  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},
  volume={39},
  number={6},
  pages={6182--6190},
  year={2025}
}"""

CELEBAMASK_HQ_CITATION = """@inproceedings{lee2020maskgan,
  title={MaskGAN: Towards Diverse and Interactive Facial Image Manipulation},
  author={Lee, Cheng-Han and Liu, Ziwei and Wu, Lingyun and Luo, Ping},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2020}
}"""

LAPA_CITATION = """@inproceedings{liu2020new,
  title={A New Dataset and Boundary-Attention Semantic Segmentation for Face Parsing},
  author={Liu, Yinglu and Shi, Hailin and Shen, Hao and Si, Yue and Wang, Xiaobo and Mei, Tao},
  booktitle={AAAI Conference on Artificial Intelligence},
  pages={11637--11644},
  year={2020}
}"""

HELEN_CITATION = """@inproceedings{le2012interactive,
  title={Interactive Facial Feature Localization},
  author={Le, Vuong and Brandt, Jonathan and Lin, Zhe and Bourdev, Lubomir and Huang, Thomas S.},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2012}
}"""


__all__ = ["CELEBAMASK_HQ_CITATION", "HELEN_CITATION", "LAPA_CITATION", "SEGFACE_CITATION"]
