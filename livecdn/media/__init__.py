"""What a name and a manifest say (HLS/DASH manifest knowledge): pure, and importing no other room."""
