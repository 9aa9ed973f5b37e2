"""The face pipeline: decoding, detection, mesh landmarks, alignment into the analysis
frame, face-region label maps, and the contact sheet that shows them."""
